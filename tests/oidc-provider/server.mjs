// A second, standards-following OpenID Provider for quotebook's integration tests:
// panva's oidc-provider (OpenID Certified), with an issuer that has no trailing slash, its
// development login form (any login, any password), RP-initiated logout and back-channel logout.
//
// Configured through the environment:
//   CLIENT_ID, CLIENT_SECRET        the one registered client (client_secret_post)
//   REDIRECT_URI                    its callback URL
//   POST_LOGOUT_REDIRECT_URI        where its logouts may return to
//   BACKCHANNEL_LOGOUT_URI          optional; where logout tokens go (OpenID Connect
//                                   Back-Channel Logout 1.0) when a session of the provider ends
//   BACKCHANNEL_LOGOUT_SESSION_REQUIRED  `true`: ID and logout tokens carry `sid`; otherwise
//                                   logout tokens name only the `sub`
//   PORT                            optional; a free port when unset
// It listens on 127.0.0.1 and prints one line of JSON, {"issuer": "http://127.0.0.1:PORT"},
// once it accepts requests. SIGTERM or SIGINT stop it.
//
// Accounts: the login typed on the form is the account id (`sub`); a login that looks like an
// email address also gives `email` and `email_verified: true`, and the part before the `@` is
// the `name`. As the spec lets a provider do with the code flow (OpenID Connect Core 5.4), the
// profile and email claims are served from UserInfo, not put in the ID token.
//
// Logout tokens are typed `logout+jwt`, expire after 120 s and are delivered before the
// provider's end-session confirmation redirects the browser.

import http from 'node:http';
import Provider from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`oidc-provider test server: ${name} is required`);
    process.exit(2);
  }
  return value;
}

const client = {
  client_id: required('CLIENT_ID'),
  client_secret: required('CLIENT_SECRET'),
  redirect_uris: [required('REDIRECT_URI')],
  post_logout_redirect_uris: [required('POST_LOGOUT_REDIRECT_URI')],
  response_types: ['code'],
  grant_types: ['authorization_code'],
  token_endpoint_auth_method: 'client_secret_post',
  ...(process.env.BACKCHANNEL_LOGOUT_URI
    ? {
      backchannel_logout_uri: process.env.BACKCHANNEL_LOGOUT_URI,
      backchannel_logout_session_required: process.env.BACKCHANNEL_LOGOUT_SESSION_REQUIRED === 'true',
    }
    : {}),
};

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [client],
  cookies: { keys: ['quotebook-tests-only-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  async findAccount(ctx, id) {
    const email = id.includes('@') ? id : undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          ...(email ? { email, email_verified: true } : {}),
          name: id.split('@')[0],
        };
      },
    };
  },
  // A first-party client: no consent screen, as Auth0 skips consent for its own applications.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      return ctx.oidc.provider.Grant.find(grantId);
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
  pkce: { required: () => true },
  // The provider refuses to fetch special-use addresses (SSRF protection), loopback included;
  // the app under test is on loopback, so its logout tokens go out without that check.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
  },
});

server.on('request', provider.callback());
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
console.log(JSON.stringify({ issuer }));
// A delivery that fails says why on stderr (run the test with its stderr inherited to see it).
provider.on('backchannel.error', (ctx, err, client) => {
  console.error(`back-channel logout to ${client.backchannelLogoutUri} failed: ${err.message}`);
});
