// MarginFace console: plain JavaScript, no network but this service, no build step.
"use strict";

const KEY = "marginface.apiKey";
const PAGE = 20;
const $ = (id) => document.getElementById(id);
const state = { offset: 0, total: 0, search: "", subject: null, faces: [], model: null, stream: null,
  job: null, thumbs: new Map(), identified: null, migration: null, poll: null };
const VIEWS = ["gallery", "identify", "verify", "people", "recognizer"];
const THUMBS_PER_CLUSTER = 16;

// ---------------------------------------------------------------- API

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

function messageOf(body, status) {
  const err = body && body.error;
  if (!err) return `The service answered ${status}.`;
  const readable = {
    unauthorized: "The API key was not accepted. Sign in again with a valid key.",
    forbidden: "This key may not do that (its scope is too small).",
    invalid_image: "That file is not an image the service can read.",
    unsupported_image: "That image is not supported (animated, or too small).",
    image_too_large: "That image has too many pixels.",
    payload_too_large: "That upload is too large.",
    no_face: "No face was found in that photo.",
    multiple_faces: "Several faces were found; send a photo with one face.",
    subject_exists: "A subject with that id already exists.",
    subject_not_found: "That subject does not exist (any more).",
    overloaded: "The service is busy; try again in a moment.",
    job_not_found: "That job is gone (discarded, expired, or the service restarted).",
    cluster_not_found: "That group is gone (merged or emptied).",
    too_many_negatives: "That subject holds as many \"not this person\" examples as it may; delete some first.",
    negative_not_found: "That \"not this person\" example is gone.",
  }[err.code];
  const scope = err.code === "forbidden" && err.details && err.details.required_scope;
  if (scope) return `This key may not do that: it needs the '${scope}' scope (admin includes write, write includes read). (forbidden)`;
  return `${readable || err.message} (${err.code})`;
}

async function api(method, path, body, onProgress) {
  const headers = { "X-API-Key": apiKey() };
  if (onProgress) return upload(method, path, body, headers, onProgress);
  let payload = body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload });
  } catch (e) {
    throw new Error("The service cannot be reached.");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!res.ok) {
    if (res.status === 401) signOut(false);
    throw new Error(messageOf(data, res.status));
  }
  return data;
}

function upload(method, path, form, headers, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onerror = () => reject(new Error("The service cannot be reached."));
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new Error(messageOf(data, xhr.status)));
    };
    xhr.send(form);
  });
}

// ---------------------------------------------------------------- messages

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }
function say(message) { $("status").textContent = message; }

async function guarded(fn) {
  clearError();
  try { await fn(); } catch (e) { showError(e.message || String(e)); }
}

// ---------------------------------------------------------------- sign-in and routing

function signOut(clearMessage = true) {
  sessionStorage.removeItem(KEY);
  stopCamera();
  if (clearMessage) clearError();
  route();
}

function route() {
  const signedIn = Boolean(apiKey());
  const view = signedIn ? (location.hash.slice(1) || "gallery") : "signin";
  for (const name of ["signin", ...VIEWS]) {
    $(`view-${name}`).hidden = name !== view;
  }
  $("tabs").hidden = !signedIn;
  for (const name of VIEWS) {
    const tab = $(`tab-${name}`);
    if (name === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (view === "gallery") guarded(loadSubjects);
  if (view === "identify" || view === "verify") guarded(loadModel);
  if (view === "recognizer") guarded(loadMigration); else stopPolling();
  if (view === "signin") $("api-key").focus();
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  $("api-key").value = "";
  guarded(async () => {
    await api("GET", "/v1/subjects?limit=1");  // proves the key before showing anything
    say("Signed in.");
    if (!location.hash) location.hash = "#gallery"; else route();
  });
});
$("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);

// ---------------------------------------------------------------- gallery

function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.append(td); return td; }
function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

async function loadSubjects() {
  const q = new URLSearchParams({ offset: state.offset, limit: PAGE });
  if (state.search) q.set("search", state.search);
  const page = await api("GET", `/v1/subjects?${q}`);
  state.total = page.total;
  const body = $("subjects").querySelector("tbody");
  body.replaceChildren();
  for (const s of page.items) {
    const row = document.createElement("tr");
    row.dataset.subject = s.id;
    cell(row, s.id);
    cell(row, s.name);
    cell(row, String(s.face_count));
    cell(row, new Date(s.created_at * 1000).toLocaleString());
    const actions = cell(row, "");
    actions.append(
      button("Open", "secondary", () => guarded(() => openSubject(s))),
      button("Rename", "secondary", () => guarded(() => renameSubject(s))),
      button("Delete", "danger", () => guarded(() => deleteSubject(s))),
    );
    body.append(row);
  }
  const last = Math.min(state.offset + PAGE, state.total);
  $("page-info").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "No subjects";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= state.total;
}

$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); guarded(loadSubjects); });
$("next").addEventListener("click", () => { state.offset += PAGE; guarded(loadSubjects); });
$("search-form").addEventListener("submit", (e) => {
  e.preventDefault(); state.search = $("search").value.trim(); state.offset = 0; guarded(loadSubjects);
});
$("create-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const body = { name: $("new-name").value.trim() };
    const id = $("new-id").value.trim();
    if (id) body.id = id;
    const s = await api("POST", "/v1/subjects", body);
    $("new-id").value = ""; $("new-name").value = "";
    say(`Created ${s.id}.`);
    await loadSubjects();
    await openSubject(s);
  });
});

async function renameSubject(s) {
  const name = prompt(`New name for ${s.id}`, s.name);
  if (!name) return;
  await api("PATCH", `/v1/subjects/${encodeURIComponent(s.id)}`, { name });
  say(`Renamed ${s.id}.`);
  await loadSubjects();
}

async function deleteSubject(s) {
  if (!confirm(`Delete ${s.id} (${s.name}) and all ${s.face_count} faces? This cannot be undone.`)) return;
  await api("DELETE", `/v1/subjects/${encodeURIComponent(s.id)}`);
  say(`Deleted ${s.id}.`);
  if (state.subject && state.subject.id === s.id) { state.subject = null; $("subject-detail").hidden = true; }
  await loadSubjects();
}

async function openSubject(s) {
  state.subject = s;
  $("detail-title").textContent = `${s.name} (${s.id})`;
  $("subject-detail").hidden = false;
  await loadFaces();
  $("face-files").focus();
}

async function loadFaces() {
  const faces = await api("GET", `/v1/subjects/${encodeURIComponent(state.subject.id)}/faces`);
  const list = $("faces");
  list.replaceChildren();
  for (const f of faces) {
    const li = document.createElement("li");
    li.textContent = `Face ${f.id} (score ${f.det_score.toFixed(2)}) `;
    li.append(button("Delete face", "danger", () => guarded(async () => {
      if (!confirm(`Delete face ${f.id}?`)) return;
      await api("DELETE", `/v1/faces/${f.id}`);
      say(`Deleted face ${f.id}.`);
      await loadFaces(); await loadSubjects();
    })));
    list.append(li);
  }
  await loadNegatives();
}

// "not this person" examples of the open subject: kept as embeddings only; forgetting one lets
// the subject be named again for faces like it
async function loadNegatives() {
  const sid = encodeURIComponent(state.subject.id);
  const found = await api("GET", `/v1/subjects/${sid}/negatives`);
  const list = $("negatives");
  list.replaceChildren();
  $("negatives-title").hidden = found.negatives.length === 0;
  for (const n of found.negatives) {
    const li = document.createElement("li");
    const from = n.source === "probe" ? "an identify photo" : n.face_id ? `gallery face ${n.face_id}` : "a cluster face";
    li.textContent = `Not this person: ${from}, ${new Date(n.created_at * 1000).toLocaleString()} `;
    const forget = button("Forget", "secondary", () => guarded(async () => {
      await api("DELETE", `/v1/subjects/${sid}/negatives/${n.id}`);
      say(`Forgot that ${from} is not ${state.subject.id}.`);
      await loadNegatives();
    }));
    forget.setAttribute("aria-label", `Forget "not this person" ${n.id}`);
    li.append(forget);
    list.append(li);
  }
}

async function addFaces(files) {
  if (!state.subject || !files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name || "photo.jpg");
  const bar = $("upload-progress");
  bar.hidden = false; bar.value = 0;
  try {
    const res = await api("POST", `/v1/subjects/${encodeURIComponent(state.subject.id)}/faces`, form,
      (p) => { bar.value = Math.round(p * 100); });
    const added = res.faces.filter((f) => f.created).length;
    const qualities = res.faces.map((f) => qualityText(f.detection)).join("; ");
    say(`Added ${added} face(s) to ${state.subject.id}: ${qualities}.`);
  } finally {
    bar.hidden = true;
  }
  $("face-files").value = "";
  await loadFaces(); await loadSubjects();
}

$("upload-faces").addEventListener("click", () => guarded(() => addFaces([...$("face-files").files])));

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("This browser offers no camera here (a camera needs https or localhost).");
  }
  state.stream = await navigator.mediaDevices.getUserMedia({ video: true });
  $("camera").srcObject = state.stream;
  $("camera").hidden = false; $("camera-capture").hidden = false;
}
function stopCamera() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null; $("camera").hidden = true; $("camera-capture").hidden = true;
}
async function captureFrame() {
  const video = $("camera");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((r) => canvas.toBlob(r, "image/jpeg", 0.92));
  return new File([blob], "webcam.jpg", { type: "image/jpeg" });
}
$("camera-start").addEventListener("click", () => guarded(startCamera));
$("camera-capture").addEventListener("click", () => guarded(async () => addFaces([await captureFrame()])));

// ---------------------------------------------------------------- operating point

async function loadModel() {
  if (state.model) return;
  state.model = await api("GET", "/v1/model");
  const select = $("identify-far");
  select.replaceChildren();
  for (const p of state.model.operating_points) {
    const o = document.createElement("option");
    o.value = String(p.far);
    o.textContent = `${p.far.toExponential(0)} (cosine ${p.threshold.toFixed(3)})`;
    if (p.far === state.model.default_identify_far) o.selected = true;
    select.append(o);
  }
  if (state.model.recommended_threshold) {
    $("identify-threshold").value = state.model.recommended_threshold.value.toFixed(3);
  }
}

// ---------------------------------------------------------------- identify

// "quality 0.87 (weakest: pose)" for a face of any response
function qualityText(face) {
  const q = face.quality;
  return q ? `quality ${q.score.toFixed(2)} (weakest: ${q.weakest})` : "quality not measured";
}

function showCandidates(face, index) {
  const list = $("candidate-list");
  list.replaceChildren();
  $("candidate-quality").textContent = `This face: ${qualityText(face.detection)}.`;
  const amb = $("candidate-ambiguous");
  amb.hidden = face.decision !== "ambiguous";
  amb.textContent = face.decision === "ambiguous"
    ? `Ambiguous: ${face.ambiguous.map((c) => `${c.name} (${c.score.toFixed(3)})`).join(" and ")} fit about equally well, so neither is named.`
    : "";
  for (const c of face.candidates) {
    const li = document.createElement("li");
    const agree = c.agreeing ? `, ${c.agreeing} of its faces agree` : "";
    const text = document.createElement("span");
    text.textContent = `${c.name} (${c.subject_id}): ${c.score.toFixed(3)}${agree} `;
    // "not this person": the photo is sent again with this face's box; only its embedding is
    // kept, and identify stops naming the subject for faces at least as close to it
    const not = button("Not this person", "secondary", () => guarded(() => notThisPerson(face, index, c)));
    not.setAttribute("aria-label", `Not ${c.name}: remember that face ${index + 1} is not ${c.subject_id}`);
    li.append(text, not);
    list.append(li);
  }
  const vetoed = $("candidate-vetoed");
  vetoed.hidden = !face.vetoed || face.vetoed.length === 0;
  vetoed.textContent = vetoed.hidden ? ""
    : `Not named because you said this face is not them: ${face.vetoed.map((v) => `${v.name} (${v.score.toFixed(3)}, but ${v.negative.toFixed(3)} to a face that is not them)`).join(", ")}.`;
  if (!face.candidates.length) list.append(Object.assign(document.createElement("li"), { textContent: face.vetoed && face.vetoed.length ? "No other candidates." : "No candidates: the gallery is empty." }));
  $("candidates-title").textContent = `Candidates for face ${index + 1}`;
  $("candidates").hidden = false;
}

// boxes are placed in percent of the picture, so they stay on the faces when it is resized
function drawFaces(result, img) {
  const layer = $("boxes");
  layer.replaceChildren();
  const pw = 100 / img.naturalWidth, ph = 100 / img.naturalHeight;
  result.faces.forEach((face, i) => {
    const [x1, y1, x2, y2] = face.detection.box;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "face-box" + (face.decision === "unknown" ? "" : ` ${face.decision}`);
    b.setAttribute("aria-pressed", "false");
    Object.assign(b.style, { left: `${x1 * pw}%`, top: `${y1 * ph}%`, width: `${(x2 - x1) * pw}%`, height: `${(y2 - y1) * ph}%` });
    const label = face.match ? `${face.match.name} ${face.match.score.toFixed(2)}`
      : face.decision === "ambiguous" ? `ambiguous: ${face.ambiguous.map((c) => c.name).join(" or ")}`
      : `unknown${face.candidates[0] ? " " + face.candidates[0].score.toFixed(2) : ""}`;
    const q = face.detection.quality ? ` · q ${face.detection.quality.score.toFixed(2)}` : "";
    const tag = document.createElement("span");
    tag.textContent = label + q;
    tag.dataset.full = label + q;
    tag.dataset.short = `${i + 1}`;
    b.append(tag);
    b.setAttribute("aria-label", `Face ${i + 1}: ${label}, ${qualityText(face.detection)}. Show candidates.`);
    b.addEventListener("click", () => {
      for (const other of layer.querySelectorAll(".face-box")) {
        other.classList.remove("selected"); other.setAttribute("aria-pressed", "false");
      }
      b.classList.add("selected"); b.setAttribute("aria-pressed", "true");
      showCandidates(face, i);
    });
    layer.append(b);
  });
  layoutLabels();
}

// Labels are laid out in pixels once the boxes are placed: each inside the picture and clear of
// the others (below its box if it can, else above, else in a free row), shortened to the face's
// number when the picture is too narrow for the whole text (the full text stays in the button's
// name and the candidates list). Laid out again when the picture is resized.
function overlaps(a, b) {
  return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
}

function placeLabel(box, tag, stage, placed, faces, own) {
  const w = tag.offsetWidth, h = tag.offsetHeight;
  if (w > stage.width || h > stage.height) return null;
  const left = box.left - stage.left, top = box.top - stage.top, bottom = box.bottom - stage.top;
  const clampX = (x) => Math.min(Math.max(x, 0), stage.width - w);
  const xs = [clampX(left), ...placed.map((p) => clampX(p.right + 2)), ...placed.map((p) => clampX(p.left - w - 2))];
  const ys = [bottom, top - h, ...placed.map((p) => p.bottom + 1), ...placed.map((p) => p.top - h - 1), top];
  let best = null;
  for (const y of ys) {
    if (y < 0 || y + h > stage.height) continue;
    for (const x of xs) {
      const r = { left: x, top: y, right: x + w, bottom: y + h };
      if (placed.some((p) => overlaps(p, r))) continue;
      // a spot that hides another face costs more than any distance
      const hides = faces.some((f) => f !== own && overlaps(f, r)) ? 10000 : 0;
      const cost = hides + Math.abs(x - clampX(left)) + Math.abs(y - bottom) * 2;
      if (!best || cost < best.cost) best = { ...r, cost };
    }
  }
  return best;
}

function layoutLabels() {
  const layer = $("boxes");
  const stage = $("stage").getBoundingClientRect(); // the picture's own box
  if (!stage.width || !stage.height) return;
  const placed = [];
  const buttons = [...layer.querySelectorAll(".face-box")];
  buttons.sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left);
  const local = (r) => ({ left: r.left - stage.left, top: r.top - stage.top,
                          right: r.right - stage.left, bottom: r.bottom - stage.top });
  const faces = buttons.map((b) => local(b.getBoundingClientRect()));
  buttons.forEach((b, i) => {
    const tag = b.querySelector("span");
    const box = b.getBoundingClientRect();
    let spot = null;
    for (const text of [tag.dataset.full, tag.dataset.short]) {
      tag.textContent = text;
      tag.hidden = false;
      spot = placeLabel(box, tag, stage, placed, faces, faces[i]);
      if (spot) break;
    }
    if (!spot) { tag.hidden = true; return; }
    placed.push(spot);
    // the span is placed from the button's padding edge (inside its border)
    tag.style.left = `${spot.left - (box.left - stage.left) - b.clientLeft}px`;
    tag.style.top = `${spot.top - (box.top - stage.top) - b.clientTop}px`;
  });
}

window.addEventListener("resize", () => { if ($("boxes").childElementCount) layoutLabels(); });

// remember that one face of the photo identified last is not subject c, then ask again
async function notThisPerson(face, index, c) {
  const form = new FormData();
  form.append("image", state.identified);
  form.append("box", face.detection.box.join(","));
  await api("POST", `/v1/subjects/${encodeURIComponent(c.subject_id)}/negatives`, form);
  await identify(state.identified);
  const again = $("boxes").querySelectorAll(".face-box")[index];
  if (again) again.click();
  say(`Remembered: face ${index + 1} is not ${c.name}.`);
}

$("identify-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const file = $("identify-file").files[0];
    if (!file) throw new Error("Choose a photo first.");
    await identify(file);
  });
});

// identify a photo (the form's, or the last one again) and draw its answer
async function identify(file) {
  const form = new FormData();
  form.append("image", file);
  form.append("top_k", "5");
  const kind = document.querySelector('input[name="op-kind"]:checked').value;
  if (kind === "far") form.append("far", $("identify-far").value);
  else form.append("threshold", $("identify-threshold").value);
  if ($("identify-margin").value.trim()) form.append("margin", $("identify-margin").value.trim());
  $("candidates").hidden = true;
  $("boxes").replaceChildren();
  say("Identifying…");
  const result = await api("POST", "/v1/identify", form);
  const img = $("identify-image");
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  await img.decode();
  drawFaces(result, img);
  const known = result.faces.filter((f) => f.decision === "match").length;
  const unsure = result.faces.filter((f) => f.decision === "ambiguous").length;
  const ambiguous = unsure ? `, ${unsure} ambiguous` : "";
  // a short line, and where the threshold comes from on a line of its own (it was one
  // sentence of nested parentheses)
  $("identify-summary").textContent = `${result.faces.length} face(s), ${known} known${ambiguous} · threshold ${result.threshold.value.toFixed(3)} · margin ${result.margin}`;
  $("identify-source").textContent = `Threshold from: ${result.threshold.source}`;
  state.identified = file;
  say("");
}

// ---------------------------------------------------------------- verify

for (const side of ["a", "b"]) {
  $(`verify-${side}`).addEventListener("change", () => {
    const f = $(`verify-${side}`).files[0];
    if (!f) return;
    $(`verify-${side}-preview`).src = URL.createObjectURL(f);
    $(`verify-${side}-preview`).hidden = false;
  });
}
$("verify-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const form = new FormData();
    form.append("image_a", $("verify-a").files[0]);
    form.append("image_b", $("verify-b").files[0]);
    const r = await api("POST", "/v1/verify", form);
    $("verify-decision").textContent = r.match ? "Same person" : "Different people";
    $("verify-decision").className = r.match ? "decision-match" : "decision-no";
    $("verify-score").textContent = r.score.toFixed(4);
    $("verify-threshold").textContent = r.threshold.value.toFixed(4);
    $("verify-source").textContent = r.threshold.source;
    const used = (f, side) => `${side}: the face at [${f.box.map(Math.round).join(", ")}] of ${f.faces_found} found, ${qualityText(f)}`;
    $("verify-faces").textContent = `${used(r.face_a, "first")}; ${used(r.face_b, "second")}`;
    $("verify-result").hidden = false;
  });
});

// ---------------------------------------------------------------- people (cluster jobs)

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// thumbnails need the key header, so they are fetched and shown from blob: URLs
async function thumb(face) {
  const key = `${state.job}/${face}`;
  if (!state.thumbs.has(key)) {
    const res = await fetch(`/v1/jobs/${state.job}/faces/${face}.jpg`, { headers: { "X-API-Key": apiKey() } });
    if (!res.ok) throw new Error(`The thumbnail of face ${face} is gone.`);
    state.thumbs.set(key, URL.createObjectURL(await res.blob()));
  }
  return state.thumbs.get(key);
}

function forgetThumbs() {
  for (const url of state.thumbs.values()) URL.revokeObjectURL(url);
  state.thumbs.clear();
}

async function waitForJob(id) {
  for (;;) {
    const job = await api("GET", `/v1/jobs/${id}`);
    const p = job.progress;
    $("cluster-progress").hidden = false;
    $("cluster-progress").value = p.total ? Math.round((100 * p.done) / p.total) : 0;
    say(`Finding faces: ${p.done} of ${p.total || "?"} photos…`);
    if (!["queued", "running"].includes(job.status)) { $("cluster-progress").hidden = true; say(""); return job; }
    await sleep(500);
  }
}

async function renderClusters() {
  const view = await api("GET", `/v1/jobs/${state.job}/clusters`);
  const list = $("clusters");
  list.replaceChildren();
  $("cluster-actions").hidden = false;
  $("cluster-summary").textContent = `${view.clusters.length} people, ${view.alone.length} faces alone, of ${view.faces} faces (linked at FAR ${view.far}, cosine ${view.threshold.toFixed(3)}).`;
  for (const c of view.clusters) {
    const li = document.createElement("li");
    li.className = "cluster";
    li.dataset.cluster = String(c.cluster);
    const head = document.createElement("h3");
    const pick = Object.assign(document.createElement("input"), { type: "checkbox", className: "pick" });
    pick.setAttribute("aria-label", `Select group ${c.cluster} for merging`);
    pick.dataset.cluster = String(c.cluster);
    const title = document.createElement("span");
    title.textContent = `Group ${c.cluster}: ${c.size} faces, cohesion ${c.cohesion.toFixed(2)}`;
    head.append(pick, title);
    if (c.subject_id) head.append(Object.assign(document.createElement("span"), { className: "named", textContent: `named ${c.subject_id}` }));
    li.append(head);
    const like = c.subject_id ? null : c.looks_like;  // a gallery subject this group resembles
    if (like) {
      const p = Object.assign(document.createElement("p"), { className: "looks-like" });
      const far = like.far === null ? "no calibrated FAR" : `FAR ${like.far.toExponential(0)}`;
      p.append(`Looks like ${like.name} (${like.subject_id}): cosine ${like.similarity.toFixed(3)}, ${like.agreeing} of ${like.checked} faces agree, ${far}. `);
      const accept = button(`Name as ${like.name}`, "", () => guarded(async () => {
        const r = await api("POST", `/v1/jobs/${state.job}/clusters/${c.cluster}/subject`, { subject_id: like.subject_id });
        say(`Named group ${c.cluster} as ${r.subject_id}: ${r.face_ids.length} faces enrolled.`);
        await renderClusters();
      }));
      accept.setAttribute("aria-label", `Name group ${c.cluster} as ${like.name}`);
      p.append(accept);
      li.append(p);
    }
    const said = c.subject_id || (like && like.subject_id);  // whom a face can be said not to be
    const thumbs = document.createElement("ul");
    thumbs.className = "thumbs";
    for (const m of c.members.slice(0, THUMBS_PER_CLUSTER)) {
      const t = document.createElement("li");
      const img = Object.assign(document.createElement("img"), { alt: `Face ${m.face} from ${m.file}` });
      img.src = await thumb(m.face);
      const remove = button("×", "danger", () => guarded(async () => {
        await api("DELETE", `/v1/jobs/${state.job}/clusters/${c.cluster}/faces/${m.face}`);
        await renderClusters();
      }));
      remove.setAttribute("aria-label", `Remove face ${m.face} from group ${c.cluster}`);
      t.append(img, remove);
      if (said) {  // named, or suggested: this face is not that person (remembered)
        const not = button(`Not ${said}`, "secondary not-person", () => guarded(async () => {
          const r = await api("POST", `/v1/jobs/${state.job}/clusters/${c.cluster}/faces/${m.face}/not-subject`, { subject_id: said });
          await renderClusters();
          say(`Face ${m.face} is not ${r.subject_id}: remembered, and taken out of group ${c.cluster}.`);
        }));
        not.setAttribute("aria-label", `Face ${m.face} is not ${said}`);
        t.append(not);
      }
      thumbs.append(t);
    }
    li.append(thumbs);
    if (c.size > THUMBS_PER_CLUSTER) li.append(Object.assign(document.createElement("p"), { className: "hint", textContent: `and ${c.size - THUMBS_PER_CLUSTER} more` }));
    li.append(nameForm(`group ${c.cluster}`, `/v1/jobs/${state.job}/clusters/${c.cluster}/subject`));
    list.append(li);
  }
  // faces in no group: shown too, each can be named on its own (it becomes a group of one)
  const alone = $("alone");
  alone.replaceChildren();
  $("alone-title").hidden = view.alone.length === 0;
  for (const f of view.alone) {
    const li = document.createElement("li");
    li.className = "alone";
    li.dataset.face = String(f.face);
    const img = Object.assign(document.createElement("img"), { alt: `Face ${f.face} from ${f.file}` });
    img.src = await thumb(f.face);
    li.append(img, nameForm(`face ${f.face}`, `/v1/jobs/${state.job}/faces/${f.face}/subject`));
    alone.append(li);
  }
}

// "subject id, name, Name into gallery" for a group or a face alone (naming again moves it)
function nameForm(what, url) {
  const form = document.createElement("form");
  form.className = "row name-cluster";
  const idInput = Object.assign(document.createElement("input"), { required: true, placeholder: "subject id", pattern: "[A-Za-z0-9][A-Za-z0-9._@\\-]{0,127}" });
  idInput.setAttribute("aria-label", `Subject id for ${what}`);
  const nameInput = Object.assign(document.createElement("input"), { placeholder: "name (optional)" });
  nameInput.setAttribute("aria-label", `Name for ${what}`);
  const submit = Object.assign(document.createElement("button"), { type: "submit", textContent: "Name into gallery" });
  form.append(idInput, nameInput, submit);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(async () => {
      const body = { subject_id: idInput.value.trim() };
      if (nameInput.value.trim()) body.name = nameInput.value.trim();
      const r = await api("POST", url, body);
      say(`Named ${what} as ${r.subject_id}: ${r.face_ids.length} faces enrolled.`);
      await renderClusters();
    });
  });
  return form;
}

$("cluster-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const file = $("cluster-zip").files[0];
    const path = $("cluster-path").value.trim();
    if (!file === !path) throw new Error("Choose a zip file or type a server folder (one of the two).");
    const form = new FormData();
    if (file) form.append("archive", file, file.name); else form.append("path", path);
    const bar = $("cluster-progress");
    bar.hidden = false; bar.value = 0;
    const job = await api("POST", "/v1/jobs/cluster", form, file ? (p) => { bar.value = Math.round(p * 100); } : undefined);
    forgetThumbs();
    state.job = job.id;
    const done = await waitForJob(job.id);
    if (done.status !== "succeeded") throw new Error(`The job ${done.status}: ${done.error || ""}`);
    await renderClusters();
  });
});

$("merge-clusters").addEventListener("click", () => guarded(async () => {
  const picked = [...document.querySelectorAll("#clusters .pick:checked")].map((b) => Number(b.dataset.cluster));
  if (picked.length < 2) throw new Error("Select two groups or more to merge.");
  for (const other of picked.slice(1)) {
    await api("POST", `/v1/jobs/${state.job}/clusters/merge`, { into: picked[0], other });
  }
  say(`Merged ${picked.length} groups into group ${picked[0]}.`);
  await renderClusters();
}));

$("discard-job").addEventListener("click", () => guarded(async () => {
  if (!state.job || !confirm("Discard this job? Its thumbnails and embeddings are deleted; named subjects stay.")) return;
  await api("DELETE", `/v1/jobs/${state.job}`);
  forgetThumbs();
  state.job = null;
  $("clusters").replaceChildren();
  $("alone").replaceChildren();
  $("alone-title").hidden = true;
  $("cluster-actions").hidden = true;
  $("cluster-summary").textContent = "";
  say("Job discarded.");
}));

// ---------------------------------------------------------------- recognizer (model migration)

const MIGRATION = "/v1/admin/model-migration";
const MOVING = ["embedding", "switching"];  // a migration thread runs: the view polls

function stopPolling() { clearTimeout(state.poll); state.poll = null; }

// "sface-2021dec (sface-2021dec@1a2b3c4d5e6f)" for a model id, when it is registered here
function modelText(id, models) {
  if (!id) return "none";
  const m = models.find((x) => x.model_id === id);
  return m ? `${m.name} (${id})` : id;
}

function pickedModel() {
  const m = state.migration && state.migration.models.find((x) => x.name === $("migrate-to").value);
  return m || null;
}

function showUncalibrated() {
  const m = pickedModel();
  $("migrate-uncalibrated").hidden = !m || m.calibrated;
}

// the body of a start or a dry run; refused here before the service is asked when an
// uncalibrated model is picked without the explicit tick
function migrationRequest(dryRun) {
  const m = pickedModel();
  if (!m) throw new Error("Choose a recognizer to move to.");
  const allow = $("allow-uncalibrated").checked;
  if (!m.calibrated && !allow) {
    throw new Error(`${m.name} has no calibrated thresholds: tick "Allow uncalibrated" to use it anyway.`);
  }
  return { to: m.name, dry_run: dryRun, allow_uncalibrated: allow };
}

async function loadMigration() {
  stopPolling();
  const was = state.migration && MOVING.includes(state.migration.state);
  const s = await api("GET", MIGRATION);
  state.migration = s;
  renderMigration(s);
  if (was && !MOVING.includes(s.state)) say($("migration-state").textContent);
  if (MOVING.includes(s.state) && location.hash === "#recognizer") {
    // a poll leaves an error on screen alone (guarded would clear it), and shows its own
    state.poll = setTimeout(() => loadMigration().catch((e) => showError(e.message || String(e))), 1000);
  }
}

function renderMigration(s) {
  const models = s.models;
  $("rec-gallery-model").textContent = modelText(s.gallery_model, models);
  $("rec-service-model").textContent = modelText(s.service_model, models);
  $("rec-previous-model").textContent = s.previous_model
    ? `${modelText(s.previous_model, models)}: ${s.staged_models[s.previous_model] ? "its embeddings are kept, a rollback is quick" : "its embeddings were erased, a rollback re-embeds every face"}`
    : "none (the gallery was never switched)";
  const staged = Object.entries(s.staged_models);
  $("rec-staged").textContent = staged.length
    ? staged.map(([id, n]) => `${n} of ${modelText(id, models)}`).join("; ")
    : "none";

  const select = $("migrate-to");
  const picked = select.value;
  select.replaceChildren();
  for (const m of models) {
    const o = document.createElement("option");
    o.value = m.name;
    const notes = [m.model_id === s.gallery_model ? "current" : "", m.calibrated ? "" : "uncalibrated"].filter(Boolean);
    o.textContent = notes.length ? `${m.name} (${notes.join(", ")})` : m.name;
    o.title = m.licence || "";
    select.append(o);
  }
  const other = models.find((m) => m.model_id !== s.gallery_model);
  // the last choice stays unless the gallery is on it now (a retry of its failures picks it again)
  if (models.some((m) => m.name === picked && m.model_id !== s.gallery_model)) select.value = picked;
  else if (other) select.value = other.name;
  showUncalibrated();

  const moving = MOVING.includes(s.state);
  $("migrate-start").disabled = moving;
  $("rollback").disabled = moving || !s.previous_model;
  $("purge").disabled = moving || staged.length === 0;

  $("migration").hidden = s.state === "idle";
  if (s.state === "idle") return;
  const words = { embedding: "Re-embedding faces", switching: "Switching (requests are held a moment)",
    switched: "Switched", staged: "Staged (not switched)", stopped: "Stopped", failed: "Failed" };
  $("migration-state").textContent = `${words[s.state] || s.state} — to ${modelText(s.to, models)}`;
  const p = s.progress || { done: 0, total: 0 };
  $("migration-progress").max = Math.max(p.total, 1);
  $("migration-progress").value = p.done;
  $("migration-count").textContent = `${p.done}/${p.total} faces`;
  $("migration-error").hidden = !s.error;
  $("migration-error").textContent = s.error ? `${s.error.message} (${s.error.code})` : "";
  const r = s.result;
  $("migration-result").hidden = !r || moving;
  if (r && !moving) {
    const parts = [`${r.embedded} re-embedded now`, `${r.failed ?? r.failed_now} could not be`];
    if (r.switched !== undefined) parts.push(`${r.switched} faces switched`, `${r.indexed} indexed`);
    $("migration-result").textContent = `Result: ${parts.join(", ")}.`;
  }
  const failures = s.failures || [];
  $("failures-title").hidden = failures.length === 0;
  const list = $("migration-failures");
  list.replaceChildren();
  for (const f of failures) {
    list.append(Object.assign(document.createElement("li"), { textContent: `Face ${f.face_id} of ${f.subject_id}: ${f.reason}` }));
  }
  if (s.state === "switched") state.model = null;  // identify's operating points are the new model's
}

$("migrate-to").addEventListener("change", showUncalibrated);

$("migrate-form").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const body = migrationRequest(true);
    const d = await api("POST", MIGRATION, body);
    $("migrate-check").textContent = `Check for ${body.to}: ${d.to_embed} of ${d.faces} faces to re-embed — ${d.from_chip} from their face chip, ${d.from_photo} from their photo, ${d.cannot_migrate} cannot be (nothing kept)${d.staged ? `; ${d.staged} already staged` : ""}.`;
  });
});

$("migrate-start").addEventListener("click", () => guarded(async () => {
  const body = migrationRequest(false);
  await api("POST", MIGRATION, body);
  say(`Moving the gallery to ${body.to}…`);
  await loadMigration();
}));

$("rollback").addEventListener("click", () => guarded(async () => {
  await api("POST", `${MIGRATION}/rollback`);
  say("Rolling back to the previous model…");
  await loadMigration();
}));

$("purge").addEventListener("click", () => guarded(async () => {
  if (!confirm("Erase the embeddings kept for a rollback? The gallery can then only go back by re-embedding every face.")) return;
  const r = await api("POST", `${MIGRATION}/purge`);
  say(`Erased ${r.purged} old embeddings.`);
  await loadMigration();
}));

route();
