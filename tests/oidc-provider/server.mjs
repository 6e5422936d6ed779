// A second, standards-following OpenID Provider for quotebook's integration tests:
// panva's oidc-provider (OpenID Certified), with an issuer that has no trailing slash, its
// development login form (any login, any password), RP-initiated logout and back-channel logout.
//
// Configured through the environment:
//   CLIENT_ID, CLIENT_SECRET        the one registered client (client_secret_post)
//   REDIRECT_URI                    its callback URL
//   POST_LOGOUT_REDIRECT_URI        where its logouts may return to
//   PORT                            optional; a free port when unset
// It listens on 127.0.0.1 and prints one line of JSON, {"issuer": "http://127.0.0.1:PORT"},
// once it accepts requests. SIGTERM or SIGINT stop it.
//
// Accounts: the login typed on the form is the account id (`sub`); a login that looks like an
// email address also gives `email` and `email_verified: true`, and the part before the `@` is
// the `name`. As the spec lets a provider do with the code flow (OpenID Connect Core 5.4), the
// profile and email claims are served from UserInfo, not put in the ID token.
//
// To extend (back-channel logout for the events issue): register `backchannel_logout_uri` on
// the client below; the feature is already on.

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
