// One browser scenario against the code-server a `fi-dist run --debug --code-server` job
// started: Debian's chromium driven by playwright-core (node-tools/), the real workbench,
// the fi-dist extension installed offline. Run by tests/integration/test_editor_browser.py:
//
//   node editor_flow.js SCENARIO CONFIG.json
//
// CONFIG: {url, password, file, line, shots}. SCENARIO: disconnect | continue | post-mortem.
// Prints one JSON line per step ({"step": ..., "t": seconds}) and a last {"done": ...};
// on failure a screenshot "failure.png" goes to CONFIG.shots and the exit code is 1.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [scenario, configPath] = process.argv.slice(2);
const cfg = JSON.parse(fs.readFileSync(configPath, 'utf8'));
const t0 = Date.now();
const say = (step, extra = {}) =>
  console.log(JSON.stringify({ step, t: (Date.now() - t0) / 1000, ...extra }));

const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync'];

/** Poll fn() until it returns a truthy value (or throw with what it saw last). */
async function until(what, fn, timeout = 60000, every = 250) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last && (!Array.isArray(last) || last.length)) return last;
    if (Date.now() > end) throw new Error(`timed out (${timeout / 1000}s) waiting for ${what}; last: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** The CALL STACK as text rows: sessions (with their state) and threads. */
async function callStack(page) {
  return page.$$eval('.debug-call-stack .monaco-list-row', (rows) => rows.map((r) => ({
    text: r.innerText.replace(/\s+/g, ' ').trim(),
    session: Boolean(r.querySelector('.session')),
    thread: Boolean(r.querySelector('.thread')),
    label: r.getAttribute('aria-label') || '',
  })));
}

/** Whether a session's state label says it is stopped ("PAUSED ON BREAKPOINT", or an
 * exception's description such as "BOOM ON RANK 3"), not running. */
const stopped = (state) => Boolean(state) && !/running/i.test(state);

/** The rank sessions listed in the CALL STACK: {"rank 0 (node 0)": "PAUSED ..."}. */
async function rankSessions(page) {
  const rows = await callStack(page);
  const out = {};
  for (const row of rows) {
    const m = /^(rank \d+ \(node \d+\))\s*(.*)$/.exec(row.text);
    if (row.session && m) out[m[1]] = m[2];
  }
  return out;
}

/** The Ranks view's rows: {"rank 0 (node 0)": "paused at debug_job.py:48"}. */
async function ranksView(page) {
  return page.$$eval('.pane:has(.pane-header[aria-label^="Ranks"]) .monaco-list-row', (rows) =>
    rows.map((r) => [r.querySelector('.label-name')?.innerText || '',
      r.querySelector('.label-description')?.innerText || '']));
}

async function shot(page, name) {
  fs.mkdirSync(cfg.shots, { recursive: true });
  await page.screenshot({ path: path.join(cfg.shots, name) });
}

/** Drag the side bar's edge so rank names and states show in full. */
async function widenSidebar(page, width) {
  const box = await page.locator('.part.sidebar').boundingBox();
  if (!box || box.width >= width) return;
  const y = box.y + box.height / 2;
  await page.mouse.move(box.x + box.width + 1, y);
  await page.mouse.down();
  await page.mouse.move(box.x + width, y, { steps: 5 });
  await page.mouse.up();
  await page.waitForTimeout(300);
}

async function command(page, title) {
  await page.keyboard.press('F1');
  await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
  await page.keyboard.type(title);
  const row = page.locator('.quick-input-list .monaco-list-row', { hasText: title }).first();
  await row.waitFor({ timeout: 30000 });
  await page.keyboard.press('Enter');
}

/** Evaluate in the Debug Console of the focused session; returns the answer's text. */
async function evaluate(page, expression, session) {
  const input = page.locator('.repl .repl-input-wrapper .monaco-editor textarea');
  if (!(await input.isVisible())) await page.keyboard.press('Control+Shift+Y');
  await input.waitFor({ timeout: 30000 });
  await input.focus();
  // The console follows the CALL STACK's focus a moment after the click: evaluating
  // before its session picker shows `session` would ask the previous session.
  await until(`the Debug Console on ${session}`, async () => {
    const shown = await page.$$eval('[id="workbench.panel.repl"] select', (els) =>
      els.map((e) => (e.options[e.selectedIndex]?.text || '').replace(/\s+/g, ' ').trim()));
    return shown.includes(session) ? true : undefined;
  }, 10000, 100);
  const before = await page.$$eval('.repl .monaco-list-row', (r) => r.length);
  await page.keyboard.type(expression);
  await page.keyboard.press('Enter');
  return until(`the answer to ${expression}`, async () => {
    const rows = await page.$$eval('.repl .monaco-list-row', (r) => r.map((x) => x.innerText));
    const answer = rows.slice(before).find((t) => !t.includes(expression) && t.trim());
    return answer ? answer.trim() : undefined;
  }, 30000);
}

/** Select rank R's session in the CALL STACK (its top frame, so the console evaluates there). */
async function selectRank(page, label) {
  // A session's row focuses its stopped thread's top frame (the console evaluates there).
  const row = page.locator(`.debug-call-stack .monaco-list-row[aria-label^="Session ${label} "]`);
  await row.first().click();
  await until(`${label} focused`, () => row.first().evaluate((el) =>
    el.classList.contains('focused') || el.classList.contains('selected')), 10000);
}

async function main() {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_FLAGS });
  const context = await browser.newContext({ viewport: { width: 1600, height: 1200 } });
  const page = await context.newPage();
  try {
    await run(page);
  } catch (err) {
    await shot(page, 'failure.png').catch(() => undefined);
    const stack = await callStack(page).catch(() => []);
    console.log(JSON.stringify({ error: String(err.stack || err), callStack: stack }));
    await browser.close();
    process.exit(1);
  }
  await browser.close();
}

async function run(page) {
  await page.goto(cfg.url + 'login');
  await page.fill('input[type=password]', cfg.password);
  await page.click('input[type=submit], button[type=submit]');
  await page.waitForSelector('.monaco-workbench .part.editor', { timeout: 90000 });
  say('workbench');

  // Open the script and set a breakpoint only the last rank reaches.
  await page.click(`.explorer-folders-view .monaco-list-row:has-text("${path.basename(cfg.file)}")`,
    { timeout: 90000 });
  await page.waitForSelector('.monaco-editor .view-lines', { timeout: 60000 });
  if (cfg.line) {
    await page.keyboard.press('Control+G');
    await page.keyboard.type(String(cfg.line));
    await page.keyboard.press('Enter');
    // Breakpoints in .py files come with the extension: F9 does nothing until the
    // extension host has registered it, so press again while no breakpoint shows.
    await until('the breakpoint in the editor', async () => {
      if (await page.$('.monaco-editor .codicon-debug-breakpoint')) return true;
      await page.keyboard.press('F9');
      await page.waitForTimeout(1500);
      return page.$('.monaco-editor .codicon-debug-breakpoint');
    }, 60000, 0);
    say('breakpoint', { line: cfg.line });
  }

  // Run and Debug view: "fi-dist: attach all ranks" is the selected configuration.
  await page.keyboard.press('Control+Shift+D');
  const select = page.locator('select[aria-label="Debug Launch Configurations"]');
  await select.waitFor({ timeout: 30000 });
  const chosen = await until('the launch configuration', () =>
    select.evaluate((el) => el.selectedIndex >= 0 && el.options[el.selectedIndex].text));
  if (chosen !== 'fi-dist: attach all ranks') throw new Error(`selected configuration: ${chosen}`);
  // Room for the CALL STACK and the Ranks view: Variables and Watch folded.
  await page.locator('.pane-header[aria-label^="Call Stack"]').first().waitFor({ timeout: 30000 });
  for (const pane of ['Variables', 'Watch']) {
    const header = page.locator(`.pane-header[aria-label^="${pane} Section"][aria-expanded="true"]`);
    if (await header.count()) await header.first().click();
  }
  // Start; on a loaded machine the workbench may still be settling and drop the click:
  // press it again only while no debug session has appeared.
  await until('the debug session to start', async () => {
    if ((await callStack(page)).length) return true;
    await page.click('.part.sidebar .codicon-debug-start');
    return until('a session in the CALL STACK', async () =>
      (await callStack(page)).length > 0, 10000).catch(() => false);
  }, 60000, 0);
  say('started');
  await page.click('.pane-header[aria-label^="Ranks"][aria-expanded="false"]').catch(() => undefined);

  const world = cfg.world || 4;
  const labels = Array.from({ length: world }, (_, r) => `rank ${r} (node ${Math.floor(r / (cfg.perNode || 2))})`);
  const paused = await until(`${world} rank sessions paused in the CALL STACK`, async () => {
    const s = await rankSessions(page);
    return labels.every((l) => stopped(s[l])) ? s : undefined;
  }, 120000);
  say('all-paused', { sessions: paused });
  // Rank order in the CALL STACK.
  const order = Object.keys(await rankSessions(page));
  if (JSON.stringify(order) !== JSON.stringify(labels)) throw new Error(`session order ${order}`);

  const rows = await until('the Ranks view listing every rank', async () => {
    const r = await ranksView(page);
    return r.length === world && r.every(([, d]) => d && !/^(running|pausing)$/.test(d)) ? r : undefined;
  }, 60000);
  say('ranks-view', { rows });
  await widenSidebar(page, 560);
  await shot(page, 'ranks-view.png');

  if (scenario === 'post-mortem') {
    await postMortem(page, labels, rows);
    return;
  }

  // Evaluate in two sessions.
  const last = labels[world - 1];
  await selectRank(page, last);
  const a = await evaluate(page, 'dist.get_rank()', last);
  await selectRank(page, labels[0]);
  const b = await evaluate(page, 'dist.get_rank()', labels[0]);
  say('evaluated', { [last]: a, [labels[0]]: b });
  if (a !== String(world - 1) || b !== '0') throw new Error(`dist.get_rank() gave ${a}, ${b}`);
  await shot(page, 'evaluated.png');

  // With a RANK session selected: Disconnect (Shift+F5) or Continue (F5).
  await selectRank(page, labels[1]);
  await page.keyboard.press(scenario === 'disconnect' ? 'Shift+F5' : 'F5');
  say(scenario === 'disconnect' ? 'disconnect' : 'continue');
  await until('every rank running again (no paused session)', async () => {
    const s = await rankSessions(page);
    return Object.values(s).every((v) => !stopped(v)) ? true : undefined;
  }, 60000);
  if (scenario === 'disconnect') {
    await until('every debug session ended', async () =>
      (await callStack(page)).length === 0 ? true : undefined, 60000);
  }
  await shot(page, 'resumed.png');
  say('done', { done: scenario });
}

async function postMortem(page, labels, rows) {
  const world = labels.length;
  const last = labels[world - 1];
  // The exception widget shows the last rank's exception at the raising line.
  const widget = page.locator('.exception-widget');
  await widget.waitFor({ timeout: 60000 });
  const text = (await widget.innerText()).replace(/\s+/g, ' ');
  say('exception-widget', { text });
  if (!text.includes('ValueError') || !text.includes(`boom on rank ${world - 1}`)) {
    throw new Error(`exception widget: ${text}`);
  }
  const states = Object.fromEntries(rows);
  if (!/^post-mortem: ValueError/.test(states[last] || '')) throw new Error(`Ranks view: ${JSON.stringify(rows)}`);
  await shot(page, 'post-mortem.png');
  await selectRank(page, last);
  await page.keyboard.press('F5'); // one Continue
  say('continue');
  // No rank stops again (no second stop, no stop on the consequences): sessions only end.
  await until('every rank running (the continue reached all)', async () =>
    Object.values(await rankSessions(page)).every((v) => !stopped(v)) ? true : undefined, 30000, 100);
  const seen = [];
  await until('every debug session ended', async () => {
    const s = await rankSessions(page);
    for (const [l, v] of Object.entries(s)) if (stopped(v)) seen.push(`${l}: ${v}`);
    return (await callStack(page)).length === 0 ? true : undefined;
  }, 90000, 200);
  if (seen.length) throw new Error(`ranks stopped again after the continue: ${seen}`);
  await shot(page, 'ended.png');
  say('done', { done: scenario });
}

main();
