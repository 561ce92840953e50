// CompreFace's official JavaScript SDK (@exadel/compreface-js-sdk 1.0.0) through its README's
// examples, against a MarginFace server. Run by tests/compreface/test_sdks.py with the machine's
// Node.js, in a folder holding the photos (the SDK takes local files by relative path):
//   node sdk_js.mjs SDK_INDEX_JS URL PORT API_KEY OUT.json
// Each step's answer (or error answer) goes to OUT.json; the test judges them.
import { writeFileSync, readFileSync } from 'fs';
import { pathToFileURL } from 'url';

const [sdkIndex, url, port, key, out] = process.argv.slice(2);
const { CompreFace } = await import(pathToFileURL(sdkIndex).href);

const steps = {};
async function step(name, promise) {
    try {
        steps[name] = await promise;
    } catch (error) {
        steps[name] = { failed: true, status: error.response?.status, body: error.response?.data,
                        error: String(error) };
    }
}

const compreFace = new CompreFace(url, port);
const recognitionService = compreFace.initFaceRecognitionService(key);
// the SDK's face collection and subjects keep the last URL they built: a fresh one per call
const faces = () => compreFace.initFaceRecognitionService(key).getFaceCollection();
const subjects = () => compreFace.initFaceRecognitionService(key).getSubjects();

await step('add_subject', subjects().add('Tom'));
await step('list_subjects', subjects().list());
await step('rename_subject', subjects().rename('Tom', 'Colin Powell'));
// "Adding faces into a face collection": a relative path and a subject name, URL-encoded
await step('add_powell', faces().add('./powell_enroll.jpg', encodeURIComponent('Colin Powell')));
// base64 is one of the SDK's documented ways to send an image
const bush64 = readFileSync('./bush_enroll.jpg').toString('base64');
await step('add_bush', faces().add(bush64, encodeURIComponent('George W Bush')));
await step('list_faces', faces().list());
// "Recognition"
await step('recognize_powell', recognitionService.recognize('./powell_probe.jpg', { limit: 0 }));
await step('recognize_bush', recognitionService.recognize('./bush_probe.jpg',
    { limit: 0, prediction_count: 2, face_plugins: 'landmarks', status: true }));
const powell = steps.add_powell.image_id;
await step('verify_example', faces().verify('./powell_probe.jpg', powell, { limit: 0 }));
// detection and verification services
const detection = compreFace.initFaceDetectionService(key);
await step('detect', detection.detect('./group.jpg', { limit: 0, face_plugins: 'landmarks' }));
await step('detect_age', detection.detect('./group.jpg', { limit: 0, face_plugins: 'age' }));
const verification = compreFace.initFaceVerificationService(key);
await step('verify_same', verification.verify('./powell_enroll.jpg', './powell_probe.jpg', {}));
await step('verify_other', verification.verify('./powell_enroll.jpg', './bush_probe.jpg', {}));
// deleting
await step('delete_example', faces().delete(steps.add_bush.image_id));
await step('delete_all_examples', faces().delete_all_subject(encodeURIComponent('Colin Powell')));
await step('delete_subject', subjects().delete(encodeURIComponent('George W Bush')));
await step('list_after', subjects().list());
writeFileSync(out, JSON.stringify(steps, null, 1));
