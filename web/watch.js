// Watching a broadcast stage: a receive-only WebRTC connection to POST /api/stages/{id}/offer,
// shared by the plain viewer page (watch.html) and the OBS overlay (overlay.html, overlay.js).
// URL parameters: stage (the stage id), key (its view key; the API answers 401 without it).
"use strict";

(function () {
  const params = new URLSearchParams(location.search);

  function waitForIce(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // Connects and keeps connected (a browser source must heal itself after a network blip).
  // opts: {variant: "main"|"overlay", onStream(MediaStream), onEvent(message), onStatus(text)}.
  function watchStage(opts) {
    const stage = params.get("stage");
    const key = params.get("key") || "";
    const status = opts.onStatus || (() => {});
    let pc = null;
    let retry = null;
    let stopped = false;

    async function connect() {
      if (!stage) { status("error: no ?stage= in the URL"); return; }
      status("connecting");
      const config = await (await fetch("/api/config")).json();
      pc = new RTCPeerConnection({ iceServers: config.iceServers || [], bundlePolicy: "max-bundle" });
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
      const channel = pc.createDataChannel("events");
      channel.onmessage = (e) => {
        try { opts.onEvent && opts.onEvent(JSON.parse(e.data)); } catch (err) { console.warn(err); }
      };
      const stream = new MediaStream();
      pc.ontrack = (e) => {
        stream.addTrack(e.track);
        if (stream.getTracks().length === 2) opts.onStream(stream);
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "connected") status("live");
        if (pc.connectionState === "failed" || pc.connectionState === "closed") again();
      };
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc);
      const res = await fetch(`/api/stages/${encodeURIComponent(stage)}/offer?key=${encodeURIComponent(key)}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, variant: opts.variant }),
      });
      const body = await res.json();
      if (!res.ok) {
        status(`error: ${body.error || res.status}`);
        // A missing stage or a wrong key will not fix itself quickly; a full stage may.
        if (res.status === 401 || res.status === 404) { stopped = true; return; }
        throw new Error(body.error || String(res.status));
      }
      await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    }

    function again() {
      if (stopped || retry) return;
      if (pc) { try { pc.close(); } catch (e) { /* already closed */ } pc = null; }
      retry = setTimeout(() => { retry = null; connect().catch(onError); }, 3000);
    }

    function onError(err) {
      console.warn("stage connection:", err);
      status(`error: ${err.message || err}`);
      again();
    }

    connect().catch(onError);
    return { close() { stopped = true; if (pc) pc.close(); } };
  }

  // Captions: each "caption" event shows its sentence for its duration (plus a moment to read).
  function captionBox(element) {
    let hide = null;
    return function (message) {
      if (message.type !== "caption") return;
      element.textContent = message.text;
      element.hidden = false;
      clearTimeout(hide);
      hide = setTimeout(() => { element.hidden = true; }, (message.duration || 3) * 1000 + 800);
    };
  }

  window.AvatarStage = { params, watchStage, captionBox };

  // The plain viewer page.
  if (document.body && document.body.dataset.page === "watch") {
    const video = document.getElementById("video");
    const state = document.getElementById("state");
    const setStatus = (text) => { state.textContent = text; document.body.dataset.state = text; };
    const showCaption = captionBox(document.getElementById("caption"));
    watchStage({
      variant: "main",
      onStream(stream) { video.srcObject = stream; video.play().catch(() => setStatus("click to play")); },
      onEvent: showCaption,
      onStatus: setStatus,
    });
    video.addEventListener("click", () => { video.muted = false; video.play(); });
  }
})();
