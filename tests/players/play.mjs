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
//   ranges=LOG   byte-range HLS (EXT-X-BYTERANGE) checked from the edge's side; LOG is the edge's
//                log file (its `vedge::access` lines). The player plays twice, each time in a new
//                browser (an empty HTTP cache), with 0 stalls and no player error (hls.js's
//                bufferSeekOverHole notice aside). Between the two plays every range of every
//                media playlist (EXT-X-MAP and segments) is fetched through the edge and must be
//                a 206 with the asked Content-Range and the bytes of the file under $FIXTURES
//                (the directory served at /fixtures/vod/). The access lines of the media files
//                must all be 206 (the player asked for ranges), those of the second play all HIT;
//                the origin ($ORIGIN_URL/__stats) must have been asked for each media file
//                exactly once per slice it spans (once if it fits one slice) over the whole case,
//                so never during the second play.
//   slice=BYTES  with ranges=: the edge's cache.slice_size (default 4 MiB). Ranges of a file
//                larger than a slice must say `detail=slice` in Cache-Status, others must not,
//                and some verified range must cross a slice boundary when any file is sliced.
// For each case: playback must start within 20 s, then play >= 8 s of media over ~10 s (media
// time advanced, counted across a VOD's loop back to 0), and the player must report no fatal
// error. Exits 1 if any check fails.
import { chromium } from 'playwright-core';
import { createHmac } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, readSync, fstatSync, closeSync, rmSync, statSync } from 'node:fs';
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
  const c = { name, type: target.slice(0, i), path: target.slice(i + 1), ll: null, sign: null, ranges: null, slice: 4 << 20 };
  for (const o of opts) {
    const [k, v] = o.split(/=(.*)/s);
    if (k === 'll') c.ll = Number(v);
    else if (k === 'sign') c.sign = v;
    else if (k === 'ranges') c.ranges = v;
    else if (k === 'slice') c.slice = Number(v);
    else throw new Error(`${name}: unknown option ${o}`);
  }
  return c;
}

// A browser of its own (a new profile: an empty HTTP cache), closed by the caller: a viewer the
// edge has not served yet.
async function newViewer() {
  const profile = mkdtempSync(join(tmpdir(), 'vedge-chromium-'));
  profiles.push(profile);
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

// hls.js's notice that it jumped a small gap in the buffer (here: at the loop back to 0 of a VOD
// whose audio and video start a few ms apart). It recovers by itself; every other error counts.
const BENIGN = new Set(['bufferSeekOverHole']);

// Plays `u` once in a new page (of `ctx`, else of the shared browser); returns [ok, summary line,
// console errors].
async function watch(c, u, ctx = null) {
  ctx = ctx || await browser(u.protocol === 'https:');
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
    let ok = s.playing && !s.fatal && advanced >= MIN_ADVANCE;
    let line = `type=${c.type}${u.protocol === 'https:' ? ` over https (${s.protocols.join(', ')})` : ''} started=${s.playing} in ${startMs} ms, ` +
      `media time ${start.toFixed(2)} -> ${s.time.toFixed(2)} (played +${advanced.toFixed(2)} s, loops ${s.loops}), fatal=${s.fatal}`;
    const blips = s.stallLog.filter((w) => w.ms !== null && w.ms < STALL_MS).length;
    const stalls = s.waiting - blips + s.bufferStalled;
    const stallText = `stalls=${stalls} (waiting ${s.waiting - blips}${c.type === 'hls' ? `, hls.js buffer stalled ${s.bufferStalled}` : ''}` +
      `; waits under ${STALL_MS} ms ${blips}; ${JSON.stringify(s.stallLog.slice(0, 5))})`;
    if (c.ll !== null) {
      const lowLatency = c.type === 'hls' ? s.parts > 0 : s.lowLatencyMode === true;
      ok = ok && stalls === 0 && lowLatency;
      line += c.type === 'hls'
        ? `, LL-HLS parts loaded ${s.parts}, blocking reloads ${s.blockingReloads}`
        : `, dash.js low-latency mode ${s.lowLatencyMode}`;
      const lat = typeof s.latency === 'number' ? s.latency : NaN;
      const met = lat < c.ll ? 'met' : 'not met';
      line += `, ${stallText}, ` +
        `latency ${isNaN(lat) ? 'unknown' : lat.toFixed(2) + ' s'} (target < ${c.ll} s: latency target ${met})`;
    }
    if (c.ranges !== null) {
      // A byte-range stream must play without a stall or a player error, fatal or not.
      ok = ok && stalls === 0 && s.errors.every((e) => BENIGN.has(e));
      line += `, ${stallText}`;
    }
    line += `, non-fatal errors=${JSON.stringify(s.errors.slice(0, 5))}`;
    return [ok, line, consoleErrors];
  } finally {
    await page.close();
  }
}

// ---- byte-range HLS (ranges=) ----

// Every byte range the playlists under `masterUrl` address: [{ url, path, start, end }] (end
// inclusive), from EXT-X-MAP BYTERANGE and EXT-X-BYTERANGE (an offset left out continues the
// previous range of the same URI, RFC 8216 §4.3.2.2).
async function playlistRanges(masterUrl) {
  const text = async (url) => {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    return r.text();
  };
  const master = await text(masterUrl);
  const media = new Set();
  for (const l of master.split('\n').map((x) => x.trim())) {
    if (l && !l.startsWith('#')) media.add(new URL(l, masterUrl).href);
    const m = /^#EXT-X-MEDIA:.*URI="([^"]+)"/.exec(l);
    if (m) media.add(new URL(m[1], masterUrl).href);
  }
  const out = new Map();
  const add = (url, len, off) => {
    const u = new URL(url);
    out.set(`${u.href} ${off}`, { url: u.href, path: u.pathname, start: off, end: off + len - 1 });
  };
  for (const mp of media) {
    const lines = (await text(mp)).split('\n').map((x) => x.trim());
    const next = new Map();
    let pending = null;
    for (const l of lines) {
      let m;
      if (l.startsWith('#EXT-X-MAP:')) {
        const uri = /URI="([^"]+)"/.exec(l)?.[1];
        const br = /BYTERANGE="(\d+)@(\d+)"/.exec(l);
        if (uri && br) add(new URL(uri, mp).href, Number(br[1]), Number(br[2]));
      } else if ((m = /^#EXT-X-BYTERANGE:(\d+)(?:@(\d+))?/.exec(l))) {
        pending = [Number(m[1]), m[2] === undefined ? null : Number(m[2])];
      } else if (l && !l.startsWith('#') && pending) {
        const url = new URL(l, mp).href;
        const off = pending[1] ?? next.get(url) ?? 0;
        add(url, pending[0], off);
        next.set(url, off + pending[0]);
        pending = null;
      }
    }
  }
  return [...out.values()];
}

// Length of the log file now (where the next access lines will start).
const logSize = (log) => statSync(log).size;

// The access lines written since byte `from` of `log` for paths under `dir` other than
// playlists: [{ path, status, cache }]. The log writer is non-blocking: wait for it first.
async function accessLines(log, from, dir) {
  await sleep(1000);
  const fd = openSync(log, 'r');
  let text;
  try {
    const len = fstatSync(fd).size - from;
    const buf = Buffer.alloc(Math.max(0, len));
    readSync(fd, buf, 0, buf.length, from);
    text = buf.toString('utf8');
  } finally {
    closeSync(fd);
  }
  const lines = [];
  for (const l of text.split('\n')) {
    if (!l.includes('vedge::access')) continue;
    const path = / path=(\S+)/.exec(l)?.[1];
    if (!path || !path.startsWith(dir) || path.endsWith('.m3u8')) continue;
    lines.push({ path, status: Number(/ status=(\d+)/.exec(l)?.[1]), cache: / cache="?([A-Z]+)/.exec(l)?.[1] });
  }
  return lines;
}

// The origin's request count per path under `dir`.
async function originCounts(dir) {
  const url = process.env.ORIGIN_URL;
  if (!url) throw new Error('ranges= needs ORIGIN_URL');
  const r = await fetch(`${url}/__stats?prefix=${encodeURIComponent(dir)}`);
  if (!r.ok) throw new Error(`${url}/__stats: ${r.status}`);
  return (await r.json()).paths;
}

// Plays a byte-range stream twice and checks the edge's side (see the header).
async function playRanges(c, u) {
  const fixtures = process.env.FIXTURES;
  if (!fixtures) throw new Error('ranges= needs FIXTURES');
  const dir = u.pathname.slice(0, u.pathname.lastIndexOf('/') + 1);
  const file = (p) => join(fixtures, decodeURIComponent(p.replace(/^\/fixtures\/vod\//, '')));
  const notes = [];
  let ok = true;
  const fail = (why) => { ok = false; notes.push(`FAILED: ${why}`); };
  const origin0 = await originCounts(dir);
  const log0 = logSize(c.ranges);

  // Each play is a new viewer (an empty browser cache): every range it plays reaches the edge.
  const play1 = await newViewer();
  const [ok1, line1, errs1] = await watch(c, u, play1).finally(() => play1.close());
  ok = ok && ok1;
  const pass1 = await accessLines(c.ranges, log0, dir);
  const not206 = pass1.filter((l) => l.status !== 206);
  if (pass1.length === 0) fail('no access line for the media files');
  if (not206.length) fail(`media responses other than 206: ${JSON.stringify(not206.slice(0, 5))}`);

  // Every range through the edge against the file's bytes.
  const ranges = await playlistRanges(u.href);
  const sizes = new Map();
  const bytes = new Map();
  let crossing = 0, sliced = 0;
  for (const r of ranges) {
    if (!bytes.has(r.path)) {
      bytes.set(r.path, readFileSync(file(r.path)));
      sizes.set(r.path, bytes.get(r.path).length);
    }
    const whole = bytes.get(r.path);
    const resp = await fetch(r.url, { headers: { range: `bytes=${r.start}-${r.end}` } });
    const body = Buffer.from(await resp.arrayBuffer());
    const cr = resp.headers.get('content-range');
    const cs = resp.headers.get('cache-status') || '';
    const want = `bytes ${r.start}-${r.end}/${whole.length}`;
    if (resp.status !== 206 || cr !== want || !body.equals(whole.subarray(r.start, r.end + 1))) {
      fail(`${r.path} bytes=${r.start}-${r.end}: ${resp.status}, Content-Range ${cr} (want ${want}), ` +
        `${body.length} bytes, ${body.equals(whole.subarray(r.start, r.end + 1)) ? 'same' : 'different'} bytes`);
      continue;
    }
    const isSliced = whole.length > c.slice;
    if (/detail=slice/.test(cs) !== isSliced) fail(`${r.path}: Cache-Status "${cs}" (file ${whole.length} B, slice ${c.slice} B)`);
    if (isSliced) sliced++;
    if (Math.floor(r.start / c.slice) !== Math.floor(r.end / c.slice)) crossing++;
  }
  const anySliced = [...sizes.values()].some((n) => n > c.slice);
  if (ranges.length === 0) fail('no EXT-X-BYTERANGE in the playlists');
  if (anySliced && crossing === 0) fail('no range crosses a slice boundary');

  const origin1 = await originCounts(dir);
  const log1 = logSize(c.ranges);
  const play2 = await newViewer();
  const [ok2, line2, errs2] = await watch(c, u, play2).finally(() => play2.close());
  ok = ok && ok2;
  const origin2 = await originCounts(dir);
  const pass2 = await accessLines(c.ranges, log1, dir);
  const notHit = pass2.filter((l) => l.status !== 206 || l.cache !== 'HIT');
  if (pass2.length === 0) fail('no access line for the media files in the second play');
  if (notHit.length) fail(`second play: media responses other than 206 HIT: ${JSON.stringify(notHit.slice(0, 5))}`);

  // Origin requests per media file over the case: one per slice it spans.
  const perFile = [];
  for (const [p, n] of sizes) {
    const asked = (origin2[p] || 0) - (origin0[p] || 0);
    const during2 = (origin2[p] || 0) - (origin1[p] || 0);
    const want = Math.max(1, Math.ceil(n / c.slice));
    perFile.push(`${p.slice(dir.length)} ${n} B: ${asked} (want ${want})`);
    if (asked !== want) fail(`${p}: ${asked} origin requests, want ${want} (one per slice)`);
    if (during2 !== 0) fail(`${p}: ${during2} origin requests during the second play`);
  }
  const line = `pass 1: ${line1}; ` +
    `ranges: ${ranges.length} verified against the files (${crossing} across a ${c.slice} B slice boundary, ` +
    `${sliced} served from slices), media responses ${pass1.length} all 206 in pass 1, ` +
    `origin requests per file [${perFile.join(', ')}]; ` +
    `pass 2: ${line2}, media responses ${pass2.length} (206 HIT: ${pass2.length - notHit.length})` +
    (notes.length ? `; ${notes.join('; ')}` : '');
  return [ok, line, ok ? [] : [...errs1, ...errs2]];
}

// Plays one case; returns [ok, summary line, extra lines for a failure].
async function play(c) {
  const u = new URL(c.path, base);
  const notes = [];
  let ok = true;
  let refusals0 = 0, probes = 0;
  if (c.ranges !== null) {
    const [rok, line, errs] = await playRanges(c, u);
    return [rok, line, errs.length ? [`  console errors: ${errs.slice(0, 5).join(' | ')}`] : []];
  }
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
  let [wok, line, consoleErrors] = await watch(c, u);
  ok = ok && wok;
  if (c.sign !== null) {
    const refused = (await tokenRefusals()) - refusals0;
    ok = ok && refused === probes;
    line += `, signed: ${notes.join(', ')}, token refusals ${refused} (probes ${probes}, player ${refused - probes})`;
  }
  const extra = !ok && consoleErrors.length ? [`  console errors: ${consoleErrors.slice(0, 5).join(' | ')}`] : [];
  return [ok, line, extra];
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
