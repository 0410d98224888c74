// Build a JavaScript plugin with componentize-js (StarlingMonkey), through
// its API: `jco componentize` 1.35 fails on any WIT path ("failed to get
// path metadata (os error 44)"). Run from the repository root:
//
//     node plugins/build-js.mjs plugins/js-hello/app.js wit plugin.wasm
//
// The WIT folder is the plugin package (wit/, package wasmail:mail, world
// plugin); componentize-js resolves `import ... from
// 'wasmail:mail/sender@0.1.0'` against it.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const [sourcePath, witPath, out] = process.argv.slice(2);
if (!sourcePath || !witPath || !out) {
  console.error('usage: node plugins/build-js.mjs APP.js WIT_DIR OUT.wasm');
  process.exit(64);
}
const { component } = await componentize({
  sourcePath,
  witPath,
  worldName: 'wasmail:mail/plugin',
  // The host serves no incoming HTTP; fetch() stays (its requests are denied).
  disableFeatures: ['fetch-event'],
});
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
