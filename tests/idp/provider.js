// A real OpenID provider on loopback for tests/idp.rs: oauth2-mock-server
// (discovery document, JWKS, RS256 tokens), driven by one JSON command per
// line on stdin and answering one JSON line each on stdout. It exits when
// stdin closes, so a test that dies takes it along.
//
//   {"op":"token","kid":K,"sub":S,"aud":A}  -> {"token":T}   signed with key K
//   {"op":"rotate"}                         -> {"kid":K}     a new key, published
//   {"op":"remove","kid":K}                 -> {"ok":true}   K leaves the JWKS
//   {"op":"stats"}                          -> {"jwks":N}    JWKS answers so far
'use strict';

const http = require('node:http');
const readline = require('node:readline');
const { OAuth2Server } = require('oauth2-mock-server');

function print(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

async function main() {
  // The mock's own routes (discovery, token, ...) behind our listener.
  const oauth2 = new OAuth2Server();
  const { issuer } = oauth2;
  const mock = oauth2.service.requestHandler;
  const first = await issuer.keys.generate('RS256');

  // The JWKS is answered here, so that a key can leave it (the mock's own
  // store only grows) and the fetches can be counted.
  const removed = new Set();
  let jwksAnswers = 0;
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/jwks') {
      jwksAnswers += 1;
      const keys = issuer.keys.toJSON().filter((k) => !removed.has(k.kid));
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ keys }));
      return;
    }
    mock(req, res);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(process.argv[2] || 0), '127.0.0.1', resolve);
  });
  const port = server.address().port;
  issuer.url = `http://127.0.0.1:${port}`;

  const ops = {
    token: async (c) => ({
      token: await issuer.buildToken({
        kid: c.kid,
        expiresIn: 3600,
        scopesOrTransform: (_header, payload) => {
          payload.sub = c.sub;
          payload.aud = c.aud;
        },
      }),
    }),
    rotate: async () => ({ kid: (await issuer.keys.generate('RS256')).kid }),
    remove: async (c) => {
      removed.add(c.kid);
      return { ok: true };
    },
    stats: async () => ({ jwks: jwksAnswers }),
  };

  print({ port, issuer: issuer.url, kid: first.kid });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    try {
      const command = JSON.parse(line);
      print(await ops[command.op](command));
    } catch (e) {
      print({ error: String(e) });
    }
  }
  server.closeAllConnections();
  server.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
