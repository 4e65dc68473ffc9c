// bench.js - face-api.js (@vladmandic/face-api 1.7.15) on photos, for the comparison
// with `facemill bench` in the README's Performance section.
//
//   node bench.js [--rounds N] [--json] PHOTO_OR_DIR...
//
// TensorFlow.js runs on its WebAssembly backend with SIMD and one thread (Node has
// no threaded WASM build, and setThreadsCount(1) asks for one anyway; both are
// checked once the backend is up). The SSD MobileNet v1 face detector and the
// age/gender net are loaded from the installed face-api package's model/ folder.
// Each JPEG is decoded once with jpeg-js (pure JavaScript) into an RGB tensor; the
// decode is timed but kept out of the per-photo figure, which is one call of
//   detectAllFaces(img, new SsdMobilenetv1Options()).withAgeAndGender()
// (detection, face crops, age and gender of every face). After one warm-up pass
// over all photos, every photo runs once per round for N rounds (default 3); the
// per-photo figure is the median of its rounds, and the mean is over the photos.
// Exit status: 0 done, 1 error, 2 usage.
'use strict';

const fs = require('fs');
const path = require('path');

const USAGE = 'usage: node bench.js [--rounds N] [--json] PHOTO_OR_DIR...\n';
const JPEG_EXT = /\.(jpe?g|jpe|jfif)$/i;

function parseArgs(argv) {
  const opt = { rounds: 3, json: false, inputs: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') {
      opt.json = true;
    } else if (a === '--rounds' || a.startsWith('--rounds=')) {
      const v = a === '--rounds' ? argv[++i] : a.slice('--rounds='.length);
      if (!/^[1-9][0-9]*$/.test(v || '')) throw new UsageError(`--rounds needs a positive integer, not ${v}`);
      opt.rounds = Number(v);
    } else if (a === '-h' || a === '--help') {
      opt.help = true;
    } else if (a.startsWith('-') && a !== '-') {
      throw new UsageError(`unknown option ${a}`);
    } else {
      opt.inputs.push(a);
    }
  }
  if (!opt.help && opt.inputs.length === 0) throw new UsageError('no photos given');
  return opt;
}

class UsageError extends Error {}
// An error in what was given (a missing photo, a file that is not a JPEG): its
// message alone is printed.
class InputError extends Error {}

// Directories give their JPEG files (not recursive), in sorted order.
function listPhotos(inputs) {
  const photos = [];
  for (const p of inputs) {
    let st;
    try {
      st = fs.statSync(p);
    } catch (e) {
      throw new InputError(`${p}: no such file or directory`);
    }
    if (st.isDirectory()) {
      const names = fs.readdirSync(p).filter((n) => JPEG_EXT.test(n)).sort();
      if (names.length === 0) throw new InputError(`${p}: no JPEG photos in this directory`);
      for (const n of names) photos.push(path.join(p, n));
    } else {
      photos.push(p);
    }
  }
  return photos;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

async function main(argv) {
  const opt = parseArgs(argv);
  if (opt.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const photos = listPhotos(opt.inputs);

  const jpeg = require('jpeg-js');
  const wasm = require('@tensorflow/tfjs-backend-wasm');
  // The package's WASM bundle: it requires @tensorflow/tfjs and
  // @tensorflow/tfjs-backend-wasm, so faceapi.tf is the same tfjs as `wasm` uses.
  const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
  const { tf } = faceapi;
  const pkgDir = path.dirname(require.resolve('@vladmandic/face-api/package.json'));
  const faceapiVersion = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).version;
  const modelDir = path.join(pkgDir, 'model');

  wasm.setThreadsCount(1);
  if (!(await tf.setBackend('wasm'))) throw new Error('the TensorFlow.js WASM backend did not start');
  await tf.ready();
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  const threaded = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
  const threads = wasm.getThreadsCount();
  const backend = tf.getBackend();
  if (backend !== 'wasm') throw new Error(`backend in use is ${backend}, not wasm`);
  if (!simd) throw new Error('this Node has no WebAssembly SIMD: the SIMD build cannot run');
  if (threads !== 1) throw new Error(`the WASM backend runs ${threads} threads, not 1`);
  const runtime = {
    backend,
    binary: threaded ? 'tfjs-backend-wasm-threaded-simd.wasm' : 'tfjs-backend-wasm-simd.wasm',
    simd,
    threads,
    tfjs: tf.version.tfjs,
    tfjs_backend_wasm: wasm.version_wasm,
    face_api: faceapiVersion,
    node: process.version,
  };

  await faceapi.nets.ssdMobilenetv1.loadFromDisk(modelDir);
  await faceapi.nets.ageGenderNet.loadFromDisk(modelDir);
  const options = new faceapi.SsdMobilenetv1Options();

  const images = photos.map((file) => {
    const bytes = fs.readFileSync(file);
    const t0 = nowMs();
    let img;
    try {
      img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false });
    } catch (e) {
      throw new InputError(`${file}: cannot decode as JPEG (${e.message})`);
    }
    const decodeMs = nowMs() - t0;
    const tensor = tf.tensor3d(img.data, [img.height, img.width, 3], 'int32');
    return { file, width: img.width, height: img.height, decodeMs, tensor, times: [], faces: null };
  });

  const detect = (tensor) => faceapi.detectAllFaces(tensor, options).withAgeAndGender();

  for (const im of images) await detect(im.tensor); // warm-up: kernels, weights on the heap
  const tensorsBefore = tf.memory().numTensors;
  for (let r = 0; r < opt.rounds; r++) {
    for (const im of images) {
      const t0 = nowMs();
      const result = await detect(im.tensor);
      im.times.push(nowMs() - t0);
      const faces = result.map((f) => ({
        score: f.detection.score,
        box: { x: f.detection.box.x, y: f.detection.box.y, width: f.detection.box.width, height: f.detection.box.height },
        age: f.age,
        gender: f.gender,
        gender_prob: f.genderProbability,
      }));
      if (im.faces !== null && im.faces.length !== faces.length) {
        throw new Error(`${im.file}: ${im.faces.length} faces in one round, ${faces.length} in another`);
      }
      im.faces = faces;
    }
  }
  const tensorsLeaked = tf.memory().numTensors - tensorsBefore;
  for (const im of images) im.tensor.dispose();

  const perPhoto = images.map((im) => ({
    photo: im.file,
    width: im.width,
    height: im.height,
    faces: im.faces.length,
    median_ms: median(im.times),
    ms: im.times,
    decode_ms: im.decodeMs,
    detections: im.faces,
  }));
  const mean = (k) => perPhoto.reduce((s, p) => s + p[k], 0) / perPhoto.length;
  const summary = {
    photos: perPhoto.length,
    rounds: opt.rounds,
    mean_ms: mean('median_ms'),
    mean_faces: mean('faces'),
    mean_decode_ms: mean('decode_ms'),
    tensors_leaked: tensorsLeaked,
  };

  if (opt.json) {
    process.stdout.write(`${JSON.stringify({ runtime, options: { detector: 'ssdMobilenetv1', minConfidence: options.minConfidence, maxResults: options.maxResults }, photos: perPhoto, summary })}\n`);
    return 0;
  }
  const out = [];
  out.push(`face-api ${runtime.face_api}: tfjs ${runtime.tfjs}, backend ${runtime.backend} ` +
    `(tfjs-backend-wasm ${runtime.tfjs_backend_wasm}, ${runtime.binary}, SIMD ${simd ? 'on' : 'off'}, ` +
    `threads ${threads}), node ${runtime.node}`);
  out.push(`detectAllFaces(img, SsdMobilenetv1Options{minConfidence: ${options.minConfidence}, ` +
    `maxResults: ${options.maxResults}}).withAgeAndGender(), 1 warm-up pass, median of ${opt.rounds} round${opt.rounds > 1 ? 's' : ''}`);
  out.push('');
  const nameW = Math.max(5, ...perPhoto.map((p) => path.basename(p.photo).length));
  const roundsCol = (p) => p.ms.map((x) => x.toFixed(0)).join(' ');
  const roundsW = Math.max(10, ...perPhoto.map((p) => roundsCol(p).length));
  out.push(`${'photo'.padEnd(nameW)}  ${'size'.padStart(9)}  faces  ${'median ms'.padStart(9)}  ${'rounds, ms'.padEnd(roundsW)}  decode ms`);
  for (const p of perPhoto) {
    out.push(`${path.basename(p.photo).padEnd(nameW)}  ${`${p.width}x${p.height}`.padStart(9)}  ` +
      `${String(p.faces).padStart(5)}  ${p.median_ms.toFixed(1).padStart(9)}  ` +
      `${roundsCol(p).padEnd(roundsW)}  ${p.decode_ms.toFixed(1).padStart(9)}`);
  }
  out.push(`${'mean'.padEnd(nameW)}  ${''.padStart(9)}  ${summary.mean_faces.toFixed(2).padStart(5)}  ` +
    `${summary.mean_ms.toFixed(1).padStart(9)}  ${''.padEnd(roundsW)}  ${summary.mean_decode_ms.toFixed(1).padStart(9)}`);
  if (tensorsLeaked !== 0) out.push(`warning: ${tensorsLeaked} tensors were left allocated by the timed calls`);
  process.stdout.write(`${out.join('\n')}\n`);
  return 0;
}

main(process.argv.slice(2)).then((rc) => { process.exitCode = rc; }, (e) => {
  if (e instanceof UsageError) {
    process.stderr.write(`bench.js: ${e.message}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  const msg = e instanceof InputError ? e.message : (e && e.stack) || e;
  process.stderr.write(`bench.js: error: ${msg}\n`);
  process.exitCode = 1;
});
