// Bundles src/ with esbuild into ../static/viewer/viewer.js and records, in
// ../static/viewer/BUILD_INFO.json, the hash of what it was built from (this file,
// package.json, package-lock.json and src/): tests/cases_tests/test_viewer_bundle.py
// recomputes it, so a source change without a rebuild fails the tests.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const out = join(here, "..", "static", "viewer");

function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) =>
    d.isDirectory() ? files(join(dir, d.name)) : [join(dir, d.name)],
  );
}

export function sourceHash() {
  const inputs = ["build.mjs", "package.json", "package-lock.json", ...files(join(here, "src")).map((f) => relative(here, f))]
    .map((p) => p.split("\\").join("/"))
    .sort();
  const h = createHash("sha256");
  for (const p of inputs) {
    h.update(p + "\0");
    h.update(readFileSync(join(here, p)));
    h.update("\0");
  }
  return { sha256: h.digest("hex"), inputs };
}

// vtk.js pulls in an XML writer (xmlbuilder2) the viewer never calls; it imports two Node
// built-ins, stubbed here so the browser bundle builds.
const nodeStubs = {
  name: "node-stubs",
  setup(b) {
    b.onResolve({ filter: /^(url|events)$/ }, (args) => ({ path: args.path, namespace: "stub" }));
    b.onLoad({ filter: /.*/, namespace: "stub" }, (args) => ({
      contents:
        args.path === "events"
          ? "class EventEmitter { on() { return this; } once() { return this; } off() { return this; } emit() { return false; } removeListener() { return this; } } module.exports = EventEmitter; module.exports.EventEmitter = EventEmitter;"
          : "module.exports = { URL: globalThis.URL, URLSearchParams: globalThis.URLSearchParams };",
      loader: "js",
    }));
  },
};

// Cornerstone's tools package declares "sideEffects": false, but esbuild reads the nearest
// package.json (dist/esm/package.json, which does not say it), so every tool class would be
// bundled. The tool modules only define classes (addTool registers them): let esbuild drop
// the ones the viewer does not import.
const toolsTreeShaking = {
  name: "tools-tree-shaking",
  setup(b) {
    b.onResolve({ filter: /^\.\.?\// }, async (args) => {
      if (!/@cornerstonejs[\\/]tools[\\/]dist[\\/]esm[\\/]tools/.test(args.resolveDir)) return undefined;
      if (args.pluginData === "tools-tree-shaking") return undefined;
      const result = await b.resolve(args.path, {
        resolveDir: args.resolveDir,
        kind: args.kind,
        importer: args.importer,
        pluginData: "tools-tree-shaking",
      });
      if (result.errors.length) return undefined;
      return { ...result, sideEffects: false };
    });
  },
};

mkdirSync(out, { recursive: true });
const result = await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "iife",
  minify: process.env.VIEWER_DEBUG !== "1", // VIEWER_DEBUG=1: readable stack traces, not for commit
  target: ["es2020"],
  outfile: join(out, "viewer.js"),
  legalComments: "eof",
  logLevel: "warning",
  metafile: true,
  plugins: [nodeStubs, toolsTreeShaking],
});
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const versions = Object.fromEntries(
  Object.entries(lock.packages || {})
    .filter(([k]) => /node_modules\/(@cornerstonejs\/[^/]+|esbuild)$/.test(k))
    .map(([k, v]) => [k.replace(/^node_modules\//, ""), v.version]),
);
const { sha256, inputs } = sourceHash();
const bytes = result.metafile.outputs[Object.keys(result.metafile.outputs)[0]].bytes;
writeFileSync(
  join(out, "BUILD_INFO.json"),
  JSON.stringify({ source_sha256: sha256, inputs, versions, bundle_bytes: bytes, command: "npm ci && npm run build" }, null, 2) + "\n",
);
console.log(`static/viewer/viewer.js: ${(bytes / 1024).toFixed(0)} KiB, sources ${sha256.slice(0, 12)}`);
