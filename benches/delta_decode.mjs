// CPU per message of the JavaScript client's delta decoding (web/wsgate.js),
// on the 200-metric dashboard stream of tests/js/delta_vectors.json:
//
//   node benches/delta_decode.mjs [rounds]
//
// Prints µs per message for: a whole publication as the client handles it
// on a delta subscription (JSON.parse of the frame, its data's bytes kept);
// a delta publication (JSON.parse of the frame, TextEncoder, fossilApply,
// TextDecoder, JSON.parse of the data); fossilApply alone; and, for
// reference, JSON.parse of a whole frame as a subscription without deltas
// handles it. Seven rounds, the cases alternating within each (the box is
// shared); each round runs every case `rounds` times over every message of
// the stream; the median round is printed, and the fastest.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { WsGate } = require(join(here, '..', 'web', 'wsgate.js'));
const vectors = JSON.parse(readFileSync(join(here, '..', 'tests', 'js', 'delta_vectors.json'), 'utf8'));
const s = vectors.streams.find((x) => x.channel === 'dash:eu');
const rounds = Number(process.argv[2] || 2000);

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });
const wholes = s.data.map((d, i) => `{"channel":"${s.channel}","offset":${i + 1},"data":${d}}`);
const deltaFrames = s.frames.filter((_, i) => s.kinds[i] === 'delta');
const bases = s.data.slice(0, -1).map((d) => enc.encode(d));
const deltas = deltaFrames.map((f) => enc.encode(JSON.parse(f).data));
let sink = 0;

const cases = [
  ['whole, no delta subscription (JSON.parse)', wholes.length, () => {
    for (const w of wholes) sink += Object.keys(JSON.parse(w).data).length;
  }],
  ['whole on a delta subscription (+ its bytes kept)', wholes.length, () => {
    for (const w of wholes) {
      sink += Object.keys(JSON.parse(w).data).length;
      sink += enc.encode(w.slice(w.indexOf(',"data":') + 8, -1)).length;
    }
  }],
  ['delta (JSON.parse, apply, decode, JSON.parse)', deltaFrames.length, () => {
    for (let i = 0; i < deltaFrames.length; i++) {
      const msg = JSON.parse(deltaFrames[i]);
      const out = WsGate.fossilApply(bases[i], enc.encode(msg.data));
      sink += Object.keys(JSON.parse(dec.decode(out))).length;
    }
  }],
  ['fossilApply alone', deltas.length, () => {
    for (let i = 0; i < deltas.length; i++) sink += WsGate.fossilApply(bases[i], deltas[i]).length;
  }],
];

// Warm up the JIT.
for (let k = 0; k < 50; k++) for (const [, , fn] of cases) fn();

console.log(
  `node ${process.version}; ${s.data.length} publications of ${s.data[0].length} B, deltas of ` +
    `${Math.round(deltas.reduce((a, d) => a + d.length, 0) / deltas.length)} B on average; ${rounds} rounds of 7`,
);
const runs = cases.map(() => []);
for (let r = 0; r < 7; r++) {
  cases.forEach(([, perRound, fn], c) => {
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < rounds; k++) fn();
    runs[c].push(Number(process.hrtime.bigint() - t0) / 1e3 / (rounds * perRound));
  });
}
cases.forEach(([name], c) => {
  const v = runs[c].sort((a, b) => a - b);
  console.log(`${name.padEnd(52)} ${v[3].toFixed(2).padStart(7)} µs/message (min ${v[0].toFixed(2)})`);
});
if (sink === 42) console.log('');
