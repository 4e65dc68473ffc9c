// embed.js - the library half of the backbone reference check
// (tests/reference/check_dlib_resnet.py): runs @vladmandic/face-api@1.7.15's face
// recognition net, unchanged, on raw 150x150 RGB faces and writes its 128-d
// descriptors.
//
// Why it exists: facemill reimplements the network in C from converted weights; the
// only trustworthy answer is the library's own, computed by TensorFlow.js's pure
// JavaScript CPU backend (no native or WebAssembly code).
//
//   node embed.js FACEAPI_DIR OUT.f32 FACE.rgb...
// FACEAPI_DIR holds face-api.node-wasm.js (the package's dist bundle) and
// face_recognition_model-weights_manifest.json + face_recognition_model.bin, as
// models/fetch copies them to models/cache/faceapi/. @tensorflow/tfjs and
// @tensorflow/tfjs-backend-wasm (which the bundle requires, but is not used) are
// resolved through NODE_PATH (models/cache/node/node_modules, see setup). Each face is
// a 150x150 input, so the library's resize to 150x150 is skipped (it only resizes
// other sizes) and it sees exactly the pixels facemill sees. Writes n x 128 float32
// (little-endian) to OUT.f32.
'use strict';

const fs = require('fs');
const path = require('path');

const SIZE = 150;

async function main(argv) {
  if (argv.length < 3) {
    process.stderr.write('usage: node embed.js FACEAPI_DIR OUT.f32 FACE.rgb...\n');
    return 2;
  }
  const [dir, out, ...faces] = argv;
  const tf = require('@tensorflow/tfjs');
  const faceapi = require(path.resolve(dir, 'face-api.node-wasm.js'));
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu' || faceapi.tf.getBackend() !== 'cpu') {
    throw new Error('the TensorFlow.js CPU backend is not active');
  }
  const net = faceapi.nets.faceRecognitionNet;
  await net.loadFromDisk(path.resolve(dir));

  const result = new Float32Array(faces.length * 128);
  for (let i = 0; i < faces.length; i++) {
    const bytes = fs.readFileSync(faces[i]);
    if (bytes.length !== SIZE * SIZE * 3) {
      throw new Error(`${faces[i]}: ${bytes.length} bytes, expected ${SIZE * SIZE * 3}`);
    }
    const x = tf.tensor3d(new Int32Array(bytes), [SIZE, SIZE, 3], 'int32');
    const d = await net.computeFaceDescriptor(x);
    x.dispose();
    if (!(d instanceof Float32Array) || d.length !== 128) {
      throw new Error(`${faces[i]}: unexpected descriptor`);
    }
    result.set(d, i * 128);
  }
  fs.writeFileSync(out, Buffer.from(result.buffer));
  return 0;
}

main(process.argv.slice(2)).then((rc) => { process.exitCode = rc; }, (e) => {
  process.stderr.write(`embed.js: ${e && e.stack ? e.stack : e}\n`);
  process.exitCode = 1;
});
