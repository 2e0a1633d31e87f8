// Plays streams in headless Chromium through a running edge and checks each one.
//   node play.mjs EDGE_BASE_URL NAME=TYPE:PATH ...      e.g. http://127.0.0.1:8080 live-hls=hls:/live/p1/master.m3u8
// For each stream: playback must start within 20 s, then play >= 8 s of media over ~10 s (media
// time advanced, counted across a VOD's loop back to 0), and the player must report no fatal
// error. Exits 1 if any check fails.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, ...streams] = process.argv.slice(2);
const PLAY_MS = Number(process.env.PLAY_MS || 10000);
const MIN_ADVANCE = Number(process.env.MIN_ADVANCE || 8);
const profile = mkdtempSync(join(tmpdir(), 'vedge-chromium-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let failed = 0;
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
});
try {
  for (const spec of streams) {
    const [name, rest] = spec.split('=');
    const i = rest.indexOf(':');
    const type = rest.slice(0, i), path = rest.slice(i + 1);
    const page = await ctx.newPage();
    const consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    const url = `${base}/player/index.html?type=${type}&src=${encodeURIComponent(path)}`;
    await page.goto(url);
    const state = () => page.evaluate(() => window.__player);
    let s = await state();
    const t0 = Date.now();
    while (!(s.playing && s.time > 0) && !s.fatal && Date.now() - t0 < 20000) { await sleep(200); s = await state(); }
    const startMs = Date.now() - t0;
    const start = s.time, played0 = s.played;
    if (s.playing && !s.fatal) { await sleep(PLAY_MS); s = await state(); }
    const advanced = s.played - played0;
    const ok = s.playing && !s.fatal && advanced >= MIN_ADVANCE;
    console.log(`${ok ? 'PASS' : 'FAIL'} ${name}: type=${type} started=${s.playing} in ${startMs} ms, ` +
      `media time ${start.toFixed(2)} -> ${s.time.toFixed(2)} (played +${advanced.toFixed(2)} s, loops ${s.loops}), fatal=${s.fatal}, ` +
      `non-fatal errors=${JSON.stringify(s.errors.slice(0, 5))}`);
    if (!ok && consoleErrors.length) console.log(`  console errors: ${consoleErrors.slice(0, 5).join(' | ')}`);
    if (!ok) failed++;
    await page.close();
  }
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(`${streams.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
