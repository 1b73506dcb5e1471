// Swagger UI over BentoML's whole spec. The spec's description is BentoML's default README, whose
// badges are images on outside hosts: it is replaced here, so the page asks nothing of the outside.
"use strict";

fetch("/docs.json").then((response) => response.json()).then((spec) => {
  spec.info = {
    title: "Offline WhisperX",
    version: spec.info && spec.info.version && spec.info.version !== "None" ? spec.info.version : "1",
    description: "Transcripts with word-level timestamps and speaker labels, served offline. "
      + "The web page to transcribe a recording is at [/](/).",
  };
  window.ui = SwaggerUIBundle({
    spec: spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
