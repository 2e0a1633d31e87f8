// Plays streams in headless Chromium through a running edge and checks each one.
//   node play.mjs EDGE_BASE_URL CASE ...
// CASE is NAME=TYPE:PATH[;OPTION...], e.g. live-hls=hls:/live/p1/master.m3u8. TYPE is hls
// (hls.js) or dash (dash.js). PATH is a path on EDGE_BASE_URL, or a full URL on another edge (the
// test page is then loaded from that edge too; an https:// edge is played in a second browser
// context that accepts any certificate, the run's self-signed one). OPTIONs:
//   ll=SECONDS   low latency (hls.js lowLatencyMode, dash.js live delay + catch-up): the case also
//                needs 0 stalls after the start (an hls.js BUFFER_STALLED_ERROR, or the element
//                `waiting` for 200 ms or more outside a seek) and the player in low latency
//                (hls.js loaded LL-HLS parts; dash.js in its low-latency mode), and prints the
//                player's live latency at the end against the target SECONDS ("met"/"not met":
//                the figure never fails a case).
//   sign=ACL     signed URL: the player gets only PATH?hdnts=<EdgeAuth 2.0 token for ACL>, signed
//                with the hex key in $TOKEN_KEY; probes without a token and with a forged one must
//                get 403, and the edge's vedge_token_refused_total (from $ADMIN_URL/metrics with
//                $ADMIN_TOKEN) must grow by exactly the number of probes: no refusal for the player.
// For each case: playback must start within 20 s, then play >= 8 s of media over ~10 s (media
// time advanced, counted across a VOD's loop back to 0), and the player must report no fatal
// error. Exits 1 if any check fails.
import { chromium } from 'playwright-core';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, ...cases] = process.argv.slice(2);
const PLAY_MS = Number(process.env.PLAY_MS || 10000);
const MIN_ADVANCE = Number(process.env.MIN_ADVANCE || 8);
// A `waiting` episode shorter than this is not a stall (see www/index.html).
const STALL_MS = 200;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const profiles = [];
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--autoplay-policy=no-user-gesture-required'];

// One browser for plain http edges; a second one, started on first use, for https edges with the
// run's self-signed certificate (the flag stays off the other cases).
const browsers = {};
async function browser(tls) {
  const k = tls ? 'tls' : 'plain';
  if (!browsers[k]) {
    const profile = mkdtempSync(join(tmpdir(), 'vedge-chromium-'));
    profiles.push(profile);
    browsers[k] = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: tls ? [...CHROMIUM_ARGS, '--ignore-certificate-errors'] : CHROMIUM_ARGS,
    });
  }
  return browsers[k];
}

// Akamai EdgeAuth Token 2.0 (what the akamai-edgeauth generators make, escape_early off):
// `st=..~exp=..~acl=..~hmac=HEX`, the HMAC-SHA256 of the fields before `~hmac`, keyed with the
// hex-decoded secret.
function edgeAuthToken(keyHex, acl, windowSecs = 300) {
  const now = Math.floor(Date.now() / 1000);
  const fields = `st=${now}~exp=${now + windowSecs}~acl=${acl}`;
  const hmac = createHmac('sha256', Buffer.from(keyHex, 'hex')).update(fields).digest('hex');
  return `${fields}~hmac=${hmac}`;
}

// Sum of vedge_token_refused_total over its labels, from the edge's admin /metrics.
async function tokenRefusals() {
  const url = process.env.ADMIN_URL;
  if (!url) throw new Error('sign= needs ADMIN_URL (and ADMIN_TOKEN)');
  const r = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${process.env.ADMIN_TOKEN || ''}` } });
  if (!r.ok) throw new Error(`${url}/metrics: ${r.status}`);
  let sum = 0;
  for (const line of (await r.text()).split('\n')) {
    const m = /^vedge_token_refused_total(?:\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m) sum += Number(m[1]);
  }
  return sum;
}

function parseCase(spec) {
  const eq = spec.indexOf('=');
  const name = spec.slice(0, eq);
  const [target, ...opts] = spec.slice(eq + 1).split(';');
  const i = target.indexOf(':');
  const c = { name, type: target.slice(0, i), path: target.slice(i + 1), ll: null, sign: null };
  for (const o of opts) {
    const [k, v] = o.split(/=(.*)/s);
    if (k === 'll') c.ll = Number(v);
    else if (k === 'sign') c.sign = v;
    else throw new Error(`${name}: unknown option ${o}`);
  }
  return c;
}

// Plays one case; returns [ok, summary line, extra lines for a failure].
async function play(c) {
  const u = new URL(c.path, base);
  const notes = [];
  let ok = true;
  let refusals0 = 0, probes = 0;
  if (c.sign !== null) {
    const key = process.env.TOKEN_KEY;
    if (!key) throw new Error('sign= needs TOKEN_KEY');
    refusals0 = await tokenRefusals();
    // The same master without a token, and with a token whose HMAC is not the key's.
    const forged = edgeAuthToken(key, c.sign).replace(/hmac=./, (h) => 'hmac=' + (h.endsWith('0') ? '1' : '0'));
    for (const [what, q] of [['no token', ''], ['forged token', `?hdnts=${forged}`]]) {
      const r = await fetch(`${u.origin}${u.pathname}${q}`);
      await r.arrayBuffer();
      probes++;
      notes.push(`probe (${what}) -> ${r.status}`);
      if (r.status !== 403) ok = false;
    }
    u.search = `?hdnts=${edgeAuthToken(key, c.sign)}`;
  }
  const ctx = await browser(u.protocol === 'https:');
  const page = await ctx.newPage();
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  try {
    const src = u.pathname + u.search;
    await page.goto(`${u.origin}/player/index.html?type=${c.type}&src=${encodeURIComponent(src)}${c.ll !== null ? '&ll=1' : ''}`);
    const state = () => page.evaluate(() => window.__player);
    let s = await state();
    const t0 = Date.now();
    while (!(s.playing && s.time > 0) && !s.fatal && Date.now() - t0 < 20000) { await sleep(200); s = await state(); }
    const startMs = Date.now() - t0;
    const start = s.time, played0 = s.played;
    if (s.playing && !s.fatal) { await sleep(PLAY_MS); s = await state(); }
    const advanced = s.played - played0;
    ok = ok && s.playing && !s.fatal && advanced >= MIN_ADVANCE;
    let line = `type=${c.type}${u.protocol === 'https:' ? ` over https (${s.protocols.join(', ')})` : ''} started=${s.playing} in ${startMs} ms, ` +
      `media time ${start.toFixed(2)} -> ${s.time.toFixed(2)} (played +${advanced.toFixed(2)} s, loops ${s.loops}), fatal=${s.fatal}`;
    if (c.ll !== null) {
      const blips = s.stallLog.filter((w) => w.ms !== null && w.ms < STALL_MS).length;
      const stalls = s.waiting - blips + s.bufferStalled;
      const lowLatency = c.type === 'hls' ? s.parts > 0 : s.lowLatencyMode === true;
      ok = ok && stalls === 0 && lowLatency;
      line += c.type === 'hls'
        ? `, LL-HLS parts loaded ${s.parts}, blocking reloads ${s.blockingReloads}`
        : `, dash.js low-latency mode ${s.lowLatencyMode}`;
      const lat = typeof s.latency === 'number' ? s.latency : NaN;
      const met = lat < c.ll ? 'met' : 'not met';
      line += `, stalls=${stalls} (waiting ${s.waiting - blips}${c.type === 'hls' ? `, hls.js buffer stalled ${s.bufferStalled}` : ''}` +
        `; waits under ${STALL_MS} ms ${blips}; ${JSON.stringify(s.stallLog.slice(0, 5))}), ` +
        `latency ${isNaN(lat) ? 'unknown' : lat.toFixed(2) + ' s'} (target < ${c.ll} s: latency target ${met})`;
    }
    if (c.sign !== null) {
      const refused = (await tokenRefusals()) - refusals0;
      ok = ok && refused === probes;
      line += `, signed: ${notes.join(', ')}, token refusals ${refused} (probes ${probes}, player ${refused - probes})`;
    }
    line += `, non-fatal errors=${JSON.stringify(s.errors.slice(0, 5))}`;
    const extra = !ok && consoleErrors.length ? [`  console errors: ${consoleErrors.slice(0, 5).join(' | ')}`] : [];
    return [ok, line, extra];
  } finally {
    await page.close();
  }
}

let failed = 0;
try {
  for (const spec of cases) {
    const c = parseCase(spec);
    let ok, line, extra;
    try {
      [ok, line, extra] = await play(c);
    } catch (e) {
      [ok, line, extra] = [false, `error: ${e.message}`, []];
    }
    console.log(`${ok ? 'PASS' : 'FAIL'} ${c.name}: ${line}`);
    for (const l of extra) console.log(l);
    if (!ok) failed++;
  }
} finally {
  for (const b of Object.values(browsers)) await b.close();
  for (const p of profiles) rmSync(p, { recursive: true, force: true });
}
console.log(`${cases.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
