// Bundle the reference web client into var/browser/web (served by serve.mjs): one ES module and the page.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "var", "browser", "web");
await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(here, "app", "src", "main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  sourcemap: true,
  outfile: join(out, "main.js"),
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) await copyFile(join(here, "app", file), join(out, file));
console.log(`web client built into ${out}`);
