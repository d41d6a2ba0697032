// Serves the example page, with the TypeScript client (clients/typescript/dist, built with
// `npm --prefix clients/typescript run build`) under /client/. Loopback only.
//
//   node examples/web/serve.mjs [--port 8080]
//
// Then open http://127.0.0.1:8080/?broker=ws://127.0.0.1:7480 with the broker started with
// --http-listen 127.0.0.1:7480 --http-allowed-origins http://127.0.0.1:8080.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const client = join(here, "..", "..", "clients", "typescript", "dist");
const types = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };

/** Starts the server on 127.0.0.1:`port` (0: any free port); resolves to the http.Server. */
export function serve(port = 0) {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
    const file = path === "/" ? join(here, "index.html")
      : path.startsWith("/client/") ? join(client, path.slice("/client/".length))
      : join(here, path);
    if (!file.startsWith(here) && !file.startsWith(client)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    }
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf("--port");
  const server = await serve(i > 0 ? Number(process.argv[i + 1]) : 8080);
  console.log(`example page on http://127.0.0.1:${server.address().port}/`);
}
