// Drives a browser with puppeteer-core for the Python end-to-end tests (tests/e2e/engines.py):
// one JSON request per line on stdin, one JSON reply per line on stdout.
//   {"id": 1, "op": "launch", "browser": "firefox", "executablePath": "/usr/bin/firefox-esr"}
//   {"id": 2, "op": "newPage"} -> {"id": 2, "ok": true, "value": "p1"}
//   {"id": 3, "op": "evaluate", "page": "p1", "fn": "(a, b) => a + b", "args": [1, 2]}
// Firefox is driven over WebDriver BiDi (no geckodriver needed).
import readline from 'node:readline';
import puppeteer from 'puppeteer-core';

let browser = null;
const pages = new Map();
const dialogs = new Map();
let pageSeq = 0;

function page(id) {
  const p = pages.get(id);
  if (!p) throw new Error(`no page ${id}`);
  return p;
}

const ops = {
  async launch({ browser: name, executablePath, args = [] }) {
    browser = await puppeteer.launch({ browser: name, executablePath, headless: true, args, protocolTimeout: 60000 });
    return browser.version ? await browser.version() : name;
  },
  async newPage() {
    const p = await browser.newPage();
    const id = `p${++pageSeq}`;
    pages.set(id, p);
    dialogs.set(id, []);
    p.on('dialog', (d) => { dialogs.get(id).push(d.message()); d.dismiss().catch(() => {}); });
    await p.setViewport({ width: 1280, height: 800 });
    return id;
  },
  async goto({ page: id, url }) {
    await page(id).goto(url, { waitUntil: 'load', timeout: 30000 });
    return null;
  },
  async reload({ page: id }) {
    await page(id).reload({ waitUntil: 'load', timeout: 30000 });
    return null;
  },
  async evaluate({ page: id, fn, args = [] }) {
    return page(id).evaluate(`(${fn})(...${JSON.stringify(args)})`);
  },
  async click({ page: id, selector }) {
    await page(id).locator(selector).setTimeout(15000).click();
    return null;
  },
  async fill({ page: id, selector, text }) {
    await page(id).locator(selector).setTimeout(15000).fill(text);
    return null;
  },
  async dialogs({ page: id }) {
    return dialogs.get(id) || [];
  },
  async screenshot({ page: id, path }) {
    await page(id).screenshot({ path, fullPage: true });
    return null;
  },
  async closePage({ page: id }) {
    await page(id).close();
    pages.delete(id);
    return null;
  },
  async quit() {
    if (browser) await browser.close();
    browser = null;
    return null;
  },
};

const rl = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
rl.on('line', (line) => {
  queue = queue.then(async () => {
    let req;
    try { req = JSON.parse(line); } catch { return; }
    let reply;
    try {
      const value = await ops[req.op](req);
      reply = { id: req.id, ok: true, value: value === undefined ? null : value };
    } catch (err) {
      reply = { id: req.id, ok: false, error: String((err && err.stack) || err) };
    }
    process.stdout.write(`${JSON.stringify(reply)}\n`);
    if (req.op === 'quit') process.exit(0);
  });
});
rl.on('close', async () => {
  try { if (browser) await browser.close(); } finally { process.exit(0); }
});
