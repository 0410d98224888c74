// A hostile JavaScript plugin for the tests: it calls fetch(), which
// StarlingMonkey (componentize-js) implements over wasi:http. The host
// links wasi:http for plugins and denies every request, so the promise
// rejects; success would mean the sandbox leaked.
// Input: the URL (default http://127.0.0.1:25/).

export async function run(input) {
  const url = input.trim() || 'http://127.0.0.1:25/';
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw `fetch ${url}: ${e && e.name}: ${e && e.message}`;
  }
  return `fetched ${url}: HTTP ${response.status}: the sandbox let a request through`;
}
