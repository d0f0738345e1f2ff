// Validate one .glb with the Khronos glTF validator (npm gltf-validator); prints its JSON report.
// Usage: node tests/js/gltf_validate.mjs VENDOR_NODE_MODULES FILE.glb
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const [modules, file] = process.argv.slice(2);
const require = createRequire(join(modules, "noop.js"));
const validator = require("gltf-validator");
const report = await validator.validateBytes(new Uint8Array(readFileSync(file)), {
  uri: file,
  maxIssues: 100,
  externalResourceFunction: (uri) => Promise.reject(new Error(`external resource ${uri} (a GLB must be self-contained)`)),
});
process.stdout.write(JSON.stringify(report));
