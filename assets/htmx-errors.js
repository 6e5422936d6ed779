// quotebook: every htmx request that fails reaches the person (issue 16).
//
// htmx 2 swaps no 4xx/5xx answer by default (see the htmx-config meta in src/web/layout.rs), so
// without this an expired form, a too-long paste or a server that is down looks like a button
// that does nothing. The card the request came from is left alone, so what the person typed
// stays in the form; the message goes to the page's alert region (#request-error), which screen
// readers announce. It is cleared when a later request from the same part of the page succeeds.
//
// Events (https://htmx.org/events/): htmx:responseError (an error status), htmx:sendError (no
// answer: server down, network gone), htmx:timeout (no answer within htmx.config.timeout).
// The CSP forbids inline scripts, hence this file. No HTML from a response is inserted: the
// server's error fragment (src/error.rs: `.notice` with a title, a message and, for 5xx, a
// request id) is read as text, and a foreign answer (a proxy's page) gets a message by status.
(function () {
  "use strict";

  var KEPT = " What you typed is still here.";
  // A reload brings a fresh form but empties this one.
  var KEPT_COPY = " What you typed is still here: copy it before you reload.";
  var NO_ANSWER =
    "quotebook could not be reached. Check your connection, then try again." + KEPT;
  var TOO_SLOW =
    "quotebook did not answer in time. Check whether your change was saved before trying again.";

  function byStatus(status) {
    if (status === 403) return "This form has expired. Reload the page, then try again." + KEPT_COPY;
    if (status === 413) return "What you sent is too large. Shorten it and try again." + KEPT;
    if (status === 429) return "Too many requests right now. Wait a moment, then try again." + KEPT;
    if (status >= 500) return "Something went wrong on our side. Please try again in a moment." + KEPT;
    return "The request could not be completed (" + status + "). Please try again." + KEPT;
  }

  // The part of the page a request belongs to: its nearest element with an id (#quote,
  // #progress, #users, ...), which keeps its id when htmx swaps it.
  function partOf(elt) {
    var part = elt && elt.closest ? elt.closest("[id]") : null;
    return part ? part.id : "";
  }

  var failedPart = null;

  function show(elt, message, requestId) {
    var region = document.getElementById("request-error");
    if (!region) return;
    var text = document.createElement("p");
    text.textContent = message;
    region.replaceChildren(text);
    if (requestId) {
      var id = document.createElement("p");
      id.className = "muted";
      id.append("Request id: ");
      var code = document.createElement("code");
      code.textContent = requestId;
      id.append(code);
      region.append(id);
    }
    failedPart = partOf(elt);
    // An earlier success must not keep announcing itself next to the failure.
    var status = document.getElementById("status");
    if (status) status.textContent = "";
    region.scrollIntoView({ block: "nearest" });
  }

  function clear() {
    var region = document.getElementById("request-error");
    if (region) region.replaceChildren();
    failedPart = null;
  }

  // The message (and request id) the server rendered, or null for an answer not from us.
  function rendered(xhr) {
    var type = xhr.getResponseHeader("Content-Type") || "";
    if (type.indexOf("text/html") !== 0) return null;
    var doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    var message = doc.querySelector(".notice h1 + p");
    if (!message || !message.textContent.trim()) return null;
    var code = doc.querySelector(".notice .muted code");
    return { message: message.textContent.trim(), requestId: code ? code.textContent : null };
  }

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var own = rendered(xhr);
    if (own) {
      var kept = xhr.status === 403 ? KEPT_COPY : xhr.status === 413 ? KEPT : "";
      show(event.detail.elt, own.message + kept, own.requestId);
    } else {
      show(event.detail.elt, byStatus(xhr.status), null);
    }
  });
  document.addEventListener("htmx:sendError", function (event) {
    show(event.detail.elt, NO_ANSWER, null);
  });
  document.addEventListener("htmx:timeout", function (event) {
    show(event.detail.elt, TOO_SLOW, null);
  });
  // Before the swap, while the request's element is still in the page (an outerHTML swap
  // detaches it, and events of detached elements reach no listener here).
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (failedPart !== null && !event.detail.isError && partOf(event.detail.elt) === failedPart) {
      clear();
    }
  });
})();
