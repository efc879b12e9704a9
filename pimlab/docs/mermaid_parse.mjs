// Parse Mermaid diagrams without a browser: mermaid.parse under node, with jsdom standing in for
// the DOM that mermaid's sanitizer needs. Reads [{id, text}] as JSON on stdin, prints
// [{id, ok, type | error}] as JSON on stdout.
import { readFileSync } from 'node:fs';
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
for (const name of ['Element', 'HTMLElement', 'Node', 'DOMParser']) {
  if (!(name in globalThis)) globalThis[name] = dom.window[name];
}
const { default: mermaid } = await import('mermaid');
mermaid.initialize({ startOnLoad: false });

const results = [];
for (const { id, text } of JSON.parse(readFileSync(0, 'utf8'))) {
  try {
    const parsed = await mermaid.parse(text);
    results.push({ id, ok: true, type: parsed.diagramType });
  } catch (error) {
    results.push({ id, ok: false, error: String(error?.message ?? error) });
  }
}
console.log(JSON.stringify(results));
