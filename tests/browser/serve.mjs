// Static servers for the browser suite, on 127.0.0.1:
//   BROWSER_WEB_PORT    the reference web client (var/browser/web, built by build.mjs) and /config.json
//   BROWSER_THIRD_PORT  (optional) a page of a third party (third-party/), reached as http://localhost:<port>
//                       (same site as the gateway, another origin) and http://127.0.0.1:<port> (another site)
//   BROWSER_GATEWAY_URL the gateway the web client talks to (given to it in /config.json)
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const gatewayUrl = process.env.BROWSER_GATEWAY_URL;
if (!gatewayUrl) throw new Error("BROWSER_GATEWAY_URL is not set");
const types = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".map": "application/json",
};

function serve(directory, port, extraHeaders, routes = {}) {
  const server = createServer(async (request, response) => {
    const path = new URL(request.url ?? "/", "http://x").pathname;
    const headers = { "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", ...extraHeaders };
    if (routes[path]) {
      response
        .writeHead(200, { ...headers, "Content-Type": "application/json" })
        .end(JSON.stringify(routes[path]));
      return;
    }
    const file = normalize(join(directory, path === "/" ? "index.html" : path));
    if (!file.startsWith(directory)) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      response
        .writeHead(200, { ...headers, "Content-Type": types[extname(file)] ?? "application/octet-stream" })
        .end(body);
    } catch {
      response.writeHead(404, headers).end("not found");
    }
  });
  server.listen(port, "127.0.0.1", () => console.log(`serving ${directory} on http://127.0.0.1:${port}`));
}

// The web client may talk to its own origin and the gateway, and to nothing else.
const csp = `default-src 'self'; connect-src 'self' ${gatewayUrl}; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'`;
serve(
  join(here, "..", "..", "var", "browser", "web"),
  Number(process.env.BROWSER_WEB_PORT),
  { "Content-Security-Policy": csp },
  {
    "/config.json": { gatewayUrl },
  },
);
if (process.env.BROWSER_THIRD_PORT)
  serve(join(here, "third-party"), Number(process.env.BROWSER_THIRD_PORT), {});
