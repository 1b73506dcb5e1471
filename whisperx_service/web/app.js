// Offline WhisperX page: upload a recording as an async job, follow it, read the transcript
// beside the audio. Plain JS, no library, no request to any origin but this one.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "wxs-api-key"; // sessionStorage: the key lives as long as the tab
  const POLL_MS = 700;
  // Distinct on white and told apart by most colour-blind readers (Okabe-Ito, darkened for text).
  const PALETTE = ["#0b6fb0", "#c25400", "#008060", "#b3257a", "#6a51a3", "#8a6d00", "#c0392b", "#2f7f8f"];
  const STAGES = {
    queued: "Queued", decode: "Decoding the recording", waiting: "Waiting for room on the server",
    asr: "Transcribing", align: "Timing the words", render: "Preparing the result", done: "Done",
  };

  const form = $("upload-form");
  const fileInput = $("file");
  const drop = $("drop");
  const keyField = $("key-field");
  const keyInput = $("api-key");
  const submitButton = $("submit");
  const cancelButton = $("cancel");
  const player = $("player");

  let chosen = null; // the File to send
  let job = null; // {xhr, taskId, timer, cancelled}
  let result = null; // the JSON result
  let names = {}; // speaker label -> name the user gave
  let words = []; // [{start, end, el}] sorted by start, for the highlight
  let current = null;
  let audioUrl = null;

  // --- API key -------------------------------------------------------------------------------
  function showKeyField() {
    keyField.hidden = false;
  }
  if (document.body.dataset.auth === "required") showKeyField();
  keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
  keyInput.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, keyInput.value.trim()));
  function authHeaders() {
    const key = keyInput.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // --- choosing a file -----------------------------------------------------------------------
  function choose(file) {
    chosen = file || null;
    $("drop-text").textContent = chosen ? chosen.name + " (" + formatBytes(chosen.size) + ")"
      : "Drop a recording here, or choose a file";
  }
  fileInput.addEventListener("change", () => choose(fileInput.files[0]));
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) choose(event.dataTransfer.files[0]);
  });
  $("diarize").addEventListener("change", () => {
    $("speaker-counts").disabled = !$("diarize").checked;
  });

  // --- errors --------------------------------------------------------------------------------
  // The API answers {"error": {"message", "type", "code", "param"}}: shown as one plain sentence.
  const CODE_STATUS = {
    unsupported_media_type: 415, unsupported_media: 415, upload_too_large: 413, audio_too_long: 413,
    invalid_api_key: 401, overloaded: 503, shutting_down: 503,
  };
  function describe(status, body, retryAfter) {
    const error = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
    const detail = typeof error.message === "string" ? error.message : "";
    status = status || CODE_STATUS[error.code] || 0;
    let lead;
    if (status === 415) lead = "This file is not a recording the service can read.";
    else if (status === 413) lead = "The recording is too large or too long for this service.";
    else if (status === 422 || status === 400) lead = "The service did not accept the request.";
    else if (status === 401) {
      lead = "An API key is required: enter it in the API key field.";
      showKeyField();
    } else if (status === 503) {
      lead = "The service is busy" + (retryAfter ? "; try again in " + retryAfter + " seconds." : "; try again shortly.");
    } else if (status === 404) lead = "The job is no longer known to the service.";
    else if (status >= 500) lead = "The service failed while working on the recording.";
    else lead = "The request failed.";
    return detail ? lead + " " + capitalize(detail) + (detail.endsWith(".") ? "" : ".") : lead;
  }
  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  // --- submit, progress, cancel --------------------------------------------------------------
  function setProgress(value, text) {
    $("progress").hidden = false;
    const bar = $("progress-bar");
    if (value === null) bar.removeAttribute("value");
    else bar.value = value;
    $("progress-text").textContent = text;
  }
  function busy(on) {
    submitButton.disabled = on;
    cancelButton.hidden = !on;
  }
  function fields() {
    const data = new FormData();
    data.append("audio_file", chosen, chosen.name);
    data.append("output_format", "json");
    const language = $("language").value;
    if (language) data.append("language", language);
    const diarize = $("diarize").checked;
    data.append("diarize", diarize ? "true" : "false");
    if (diarize) {
      for (const name of ["num_speakers", "min_speakers", "max_speakers"]) {
        const value = $(name).value.trim();
        if (value) data.append(name, value);
      }
    }
    data.append("zh_script", $("zh_script").value);
    return data;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    showError("");
    if (!chosen) {
      showError("Choose a recording first.");
      fileInput.focus();
      return;
    }
    const file = chosen;
    // The service refuses a larger upload with 413 and may close the connection mid-upload, which
    // the browser reports as a network failure: say it before sending.
    const maxMb = Number(document.body.dataset.maxUploadMb);
    if (maxMb && file.size > maxMb * 1048576) {
      showError(describe(413, { error: { message: "this service accepts uploads up to " + maxMb + " MiB" } }));
      return;
    }
    const xhr = new XMLHttpRequest();
    job = { xhr: xhr, taskId: null, timer: null, cancelled: false };
    const mine = job;
    busy(true);
    setProgress(0, "Uploading…");
    xhr.open("POST", "/jobs/transcribe/submit");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) setProgress(e.loaded / e.total, "Uploading… " + Math.round(100 * e.loaded / e.total) + "%");
    });
    xhr.addEventListener("load", () => {
      if (mine.cancelled) return;
      const body = parseJson(xhr.responseText);
      if (xhr.status !== 200 || !body || !body.task_id) {
        fail(describe(xhr.status, body, xhr.getResponseHeader("Retry-After")));
        return;
      }
      mine.taskId = body.task_id;
      setProgress(null, "Queued");
      poll(mine, file);
    });
    xhr.addEventListener("error", () => { if (!mine.cancelled) fail("The upload failed: the service could not be reached."); });
    xhr.send(fields());
  });

  async function poll(mine, file) {
    if (mine.cancelled) return;
    let response;
    try {
      response = await fetch("/jobs/" + encodeURIComponent(mine.taskId), { headers: authHeaders() });
    } catch (e) {
      fail("The service could not be reached while the job was running.");
      return;
    }
    if (mine.cancelled) return;
    const progress = parseJson(await response.text());
    if (!response.ok || !progress) {
      fail(describe(response.status, progress, response.headers.get("Retry-After")));
      return;
    }
    if (progress.state === "failed") {
      fail(describe(0, progress.error));
      return;
    }
    if (progress.state === "completed") {
      await fetchResult(mine, file, progress.result_url);
      return;
    }
    const stage = STAGES[progress.stage] || progress.stage;
    const fraction = typeof progress.fraction === "number" ? progress.fraction : 0;
    const seconds = progress.audio_seconds ? " of " + clock(progress.audio_seconds) : "";
    setProgress(progress.stage === "asr" ? fraction : null,
      stage + (progress.stage === "asr" ? " — " + Math.round(100 * fraction) + "%" + seconds : "…"));
    mine.timer = setTimeout(() => poll(mine, file), POLL_MS);
  }

  async function fetchResult(mine, file, url) {
    let response;
    try {
      response = await fetch(url, { headers: authHeaders() });
    } catch (e) {
      fail("The service could not be reached to fetch the result.");
      return;
    }
    const body = parseJson(await response.text());
    if (mine.cancelled) return;
    if (!response.ok || !body || body.error || !Array.isArray(body.segments)) {
      fail(describe(response.ok ? 0 : response.status, body, response.headers.get("Retry-After")));
      return;
    }
    busy(false);
    setProgress(1, "Done");
    job = null;
    show(body, file);
  }

  function fail(message) {
    if (job) clearTimeout(job.timer);
    job = null;
    busy(false);
    $("progress").hidden = true;
    showError(message);
  }

  cancelButton.addEventListener("click", () => {
    if (!job) return;
    job.cancelled = true;
    clearTimeout(job.timer);
    const wasUploading = job.taskId === null;
    if (wasUploading) job.xhr.abort();
    job = null;
    busy(false);
    $("progress").hidden = true;
    // The service has no way to stop a job it has accepted: say so rather than pretend.
    showError(wasUploading ? "Upload cancelled." : "Stopped following the job (the service cannot stop a job it has accepted: it finishes on the server).");
    submitButton.focus();
  });

  // --- the result ----------------------------------------------------------------------------
  function speakerLabels(res) {
    const seen = new Set();
    for (const segment of res.segments) if (segment.speaker) seen.add(segment.speaker);
    return Array.from(seen); // in order of first words: "Speaker 1" speaks first
  }
  function colourOf(label) {
    const index = result ? speakerLabels(result).indexOf(label) : -1;
    return index < 0 ? "#5b6475" : PALETTE[index % PALETTE.length];
  }
  function nameOf(label) {
    return label ? (names[label] || label) : "Unknown speaker";
  }
  function turnsOf(res) {
    // Consecutive segments of one speaker read as one turn.
    const turns = [];
    for (const segment of res.segments) {
      const last = turns[turns.length - 1];
      if (last && last.speaker === (segment.speaker || null)) {
        last.segments.push(segment);
        last.end = segment.end;
      } else {
        turns.push({ speaker: segment.speaker || null, start: segment.start, end: segment.end, segments: [segment] });
      }
    }
    return turns;
  }

  function show(res, file) {
    result = res;
    names = {};
    speakerLabels(res).forEach((label, i) => { names[label] = "Speaker " + (i + 1); });
    if (audioUrl) URL.revokeObjectURL(audioUrl);
    audioUrl = URL.createObjectURL(file);
    player.src = audioUrl;
    $("result").dataset.file = file.name;
    const speakers = speakerLabels(res).length;
    $("result-meta").textContent = [file.name, "language " + res.language, clock(res.duration || 0),
      res.diarization && res.diarization.enabled ? speakers + " speaker" + (speakers === 1 ? "" : "s") : "speakers not identified",
    ].join(" · ");
    renderSpeakers();
    renderTranscript();
    $("result").hidden = false;
    $("result-title").focus({ preventScroll: true });
    $("result").scrollIntoView({ block: "start" });
  }

  function renderSpeakers() {
    const box = $("speakers");
    box.replaceChildren();
    for (const label of speakerLabels(result)) {
      const wrap = document.createElement("label");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourOf(label);
      const input = document.createElement("input");
      input.value = names[label];
      input.dataset.speaker = label;
      input.setAttribute("aria-label", "Name of " + label);
      input.addEventListener("input", () => {
        names[label] = input.value.trim() || label;
        document.querySelectorAll('.who-name[data-speaker="' + CSS.escape(label) + '"]').forEach((el) => {
          el.textContent = names[label];
        });
      });
      wrap.append(swatch, input);
      box.append(wrap);
    }
  }

  function renderTranscript() {
    const box = $("transcript");
    box.replaceChildren();
    words = [];
    const spaced = !/^(zh|ja|th|lo|my|km|yue)$/.test(result.language || "");
    for (const turn of turnsOf(result)) {
      const row = document.createElement("div");
      row.className = "turn";
      if (turn.speaker) {
        row.dataset.speaker = turn.speaker;
        row.style.setProperty("--speaker", colourOf(turn.speaker));
      }
      const who = document.createElement("div");
      who.className = "who";
      const name = document.createElement("span");
      name.className = "who-name";
      name.dataset.speaker = turn.speaker || "";
      name.textContent = nameOf(turn.speaker);
      const when = document.createElement("button");
      when.type = "button";
      when.className = "when linklike";
      when.textContent = clock(turn.start) + " – " + clock(turn.end);
      when.setAttribute("aria-label", "Play from " + clock(turn.start));
      when.addEventListener("click", () => seek(turn.start, true));
      who.append(name, when);
      const text = document.createElement("p");
      text.className = "words";
      for (const segment of turn.segments) {
        const list = segment.words && segment.words.length ? segment.words
          : [{ word: segment.text.trim(), start: segment.start, end: segment.end }];
        for (const w of list) {
          const span = document.createElement("span");
          span.className = "word";
          span.textContent = w.word;
          if (typeof w.start === "number") {
            span.dataset.start = String(w.start);
            span.dataset.end = String(typeof w.end === "number" ? w.end : w.start);
            words.push({ start: w.start, end: typeof w.end === "number" ? w.end : w.start, el: span });
          } else {
            span.classList.add("untimed");
          }
          text.append(span);
          if (spaced) text.append(" ");
        }
      }
      row.append(who, text);
      box.append(row);
    }
    words.sort((a, b) => a.start - b.start);
  }

  function seek(seconds, play) {
    player.currentTime = seconds;
    highlight(seconds);
    if (play) player.play().catch(() => {});
  }
  $("transcript").addEventListener("click", (event) => {
    const span = event.target.closest(".word[data-start]");
    if (span) seek(Number(span.dataset.start), false);
  });

  // The word being spoken: the last word starting at or before t (binary search).
  function wordAt(t) {
    let lo = 0, hi = words.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (words[mid].start <= t + 1e-3) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found < 0 || t > words[found].end + 0.5 ? null : words[found];
  }
  function highlight(t) {
    const next = wordAt(t);
    if (next === current) return;
    if (current) current.el.classList.remove("now");
    current = next;
    if (current) {
      current.el.classList.add("now");
      if (!player.paused) current.el.scrollIntoView({ block: "nearest" });
    }
  }
  // timeupdate fires ~4 times a second: too coarse for words, so follow frames while playing.
  function follow() {
    highlight(player.currentTime);
    if (!player.paused) requestAnimationFrame(follow);
  }
  player.addEventListener("play", () => requestAnimationFrame(follow));
  player.addEventListener("seeked", () => highlight(player.currentTime));

  // --- downloads, built here so they carry the speakers' names ------------------------------
  function stamp(seconds, sep) {
    const ms = Math.max(0, Math.round(seconds * 1000));
    const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
    return pad(h) + ":" + pad(m) + ":" + pad(s) + sep + String(ms % 1000).padStart(3, "0");
  }
  function cueText(segment) {
    const text = segment.text.trim();
    return segment.speaker ? nameOf(segment.speaker) + ": " + text : text;
  }
  const FORMATS = {
    txt: ["text/plain", () => turnsOf(result).map((turn) => (turn.speaker ? nameOf(turn.speaker) + " " : "")
      + "[" + clock(turn.start) + "]\n" + turn.segments.map((s) => s.text.trim()).join(" ")).join("\n\n") + "\n"],
    srt: ["application/x-subrip", () => result.segments.map((s, i) => (i + 1) + "\n" + stamp(s.start, ",")
      + " --> " + stamp(s.end, ",") + "\n" + cueText(s) + "\n").join("\n")],
    vtt: ["text/vtt", () => "WEBVTT\n\n" + result.segments.map((s) => stamp(s.start, ".") + " --> "
      + stamp(s.end, ".") + "\n" + (s.speaker ? "<v " + nameOf(s.speaker) + ">" : "") + s.text.trim() + "\n").join("\n")],
    json: ["application/json", () => {
      const named = JSON.parse(JSON.stringify(result));
      const rename = (item) => { if (item.speaker) item.speaker = nameOf(item.speaker); };
      named.segments.forEach((s) => { rename(s); (s.words || []).forEach(rename); });
      (named.word_segments || []).forEach(rename);
      if (named.diarization) (named.diarization.speaker_turns || []).forEach(rename);
      named.speaker_names = Object.assign({}, names);
      return JSON.stringify(named, null, 2) + "\n";
    }],
  };
  document.querySelectorAll(".downloads button").forEach((button) => button.addEventListener("click", () => {
    const [type, build] = FORMATS[button.dataset.format];
    const blob = new Blob([build()], { type: type + ";charset=utf-8" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = ($("result").dataset.file || "transcript").replace(/\.[^.]*$/, "") + "." + button.dataset.format;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }));

  // --- small helpers -------------------------------------------------------------------------
  function parseJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }
  function pad(n) { return String(n).padStart(2, "0"); }
  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
    return (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s % 60);
  }
  function capitalize(text) { return text.charAt(0).toUpperCase() + text.slice(1); }
  function formatBytes(n) {
    return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1024)) + " kB";
  }
})();
