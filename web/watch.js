// Watching a broadcast stage: a receive-only WebRTC connection to POST /api/stages/{id}/offer,
// shared by the plain viewer page (watch.html) and the OBS overlay (overlay.html, overlay.js).
// URL parameters: stage (the stage id), key (its view key; the API answers 401 without it).
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  // Retries wait 1 s, 2 s, 4 s ... up to 30 s, jittered by +-20 % so that the viewers of a stage
  // that comes back do not all ask at the same moment; back to 1 s once a connection is live.
  const FIRST_RETRY_MS = 1000;
  const MAX_RETRY_MS = 30000;
  // "disconnected" often heals by itself (ICE finds its way again); "failed" never does.
  const DISCONNECTED_GRACE_MS = 5000;
  // A gathering that never completes (an unreachable TURN server) must not stall the retries.
  const ICE_GATHER_MS = 10000;

  function waitForIce(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        pc.removeEventListener("icegatheringstatechange", check);
        clearTimeout(timer);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, ICE_GATHER_MS);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // What a viewer can do about an answer from the offer endpoint (the server's text goes to the console).
  function explain(status, error) {
    if (status === 401) return "the stage is not live, or the view key (?key=) is wrong";
    if (status === 503) return "the stage has all the viewers it can take";
    return error || `HTTP ${status}`;
  }

  // Connects and keeps connected: a browser source must heal itself after a network blip, a lost
  // connection or a stage that is not live yet. Nothing but a URL without ?stage= stops it.
  // opts: {variant: "main"|"overlay", onStream(MediaStream), onEvent(message),
  //        onStatus(state, detail)} where state is "connecting", "live", "reconnecting" (a
  // connection interrupted, maybe healing), "retrying" (waiting to try again; detail says why and
  // when: {message, retryIn (s), attempt}; "connecting" repeats the message) or "error" (nothing
  // to retry; detail.message says why). detail.attempt counts the attempts begun.
  function watchStage(opts) {
    const stage = params.get("stage");
    const key = params.get("key") || "";
    const label = `${opts.variant} viewer of stage ${stage}`;
    const status = opts.onStatus || (() => {});
    let pc = null;
    let retry = null;
    let grace = null;
    let stopped = false;
    let attempt = 0; // offers made, for the diagnostics (body[data-attempts] on the pages)
    let failures = 0; // consecutive attempts that did not go live: the backoff's exponent
    let problem = ""; // why the last attempt is being retried, said again while the next one runs

    async function connect() {
      attempt += 1;
      status("connecting", { attempt, message: problem });
      const config = await (await fetch("/api/config")).json();
      const mine = new RTCPeerConnection({ iceServers: config.iceServers || [], bundlePolicy: "max-bundle" });
      pc = mine;
      mine.addTransceiver("audio", { direction: "recvonly" });
      mine.addTransceiver("video", { direction: "recvonly" });
      const channel = mine.createDataChannel("events");
      channel.onmessage = (e) => {
        try { opts.onEvent && opts.onEvent(JSON.parse(e.data)); } catch (err) { console.warn(err); }
      };
      // The server closes the channel when the stage ends or drops this viewer.
      let opened = false;
      channel.onopen = () => { opened = true; };
      channel.onclose = () => { if (opened && pc === mine) lost("the stage closed the connection"); };
      const stream = new MediaStream();
      mine.ontrack = (e) => {
        stream.addTrack(e.track);
        if (stream.getTracks().length === 2) opts.onStream(stream);
      };
      mine.onconnectionstatechange = () => {
        if (pc !== mine) return; // an earlier connection, already given up
        const state = mine.connectionState;
        if (state === "connected") {
          clearTimeout(grace);
          grace = null;
          failures = 0;
          problem = "";
          status("live", { attempt });
        } else if (state === "disconnected" && !grace) {
          status("reconnecting", { attempt });
          const interrupted = () => { grace = null; lost("the connection was interrupted"); };
          grace = setTimeout(interrupted, DISCONNECTED_GRACE_MS);
        } else if (state === "failed" || state === "closed") {
          lost(`the connection ${state}`);
        }
      };
      await mine.setLocalDescription(await mine.createOffer());
      await waitForIce(mine);
      const local = mine.localDescription;
      const offer = { sdp: local.sdp, type: local.type, variant: opts.variant };
      const url = `/api/stages/${encodeURIComponent(stage)}/offer?key=${encodeURIComponent(key)}`;
      const res = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(offer),
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) {
        const err = new Error(explain(res.status, body.error));
        err.detail = `HTTP ${res.status}: ${body.error || res.statusText}`;
        err.retryAfter = Number(res.headers.get("Retry-After")) || 0;
        throw err;
      }
      if (pc !== mine) return; // given up while the offer was on its way
      await mine.setRemoteDescription({ sdp: body.sdp, type: body.type });
    }

    function lost(reason) {
      console.warn(`${label}: ${reason}`);
      again(reason, 0);
    }

    function again(reason, retryAfter) {
      if (stopped || retry) return;
      clearTimeout(grace);
      grace = null;
      if (pc) { try { pc.close(); } catch (e) { /* already closed */ } pc = null; }
      const backoff = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** failures) * (0.8 + 0.4 * Math.random());
      const delay = Math.max(backoff, retryAfter * 1000);
      failures += 1;
      problem = reason;
      status("retrying", { message: reason, retryIn: Math.round(delay / 1000), attempt });
      retry = setTimeout(() => { retry = null; connect().catch(onError); }, delay);
    }

    function onError(err) {
      console.warn(`${label}: attempt ${attempt} failed: ${err.detail || err.message || err}`);
      again(err.message || String(err), err.retryAfter || 0);
    }

    if (!stage) {
      status("error", { message: "no ?stage= in the URL", attempt });
    } else {
      connect().catch(onError);
    }
    return {
      close() {
        stopped = true;
        clearTimeout(retry);
        clearTimeout(grace);
        if (pc) pc.close();
      },
    };
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

  // One line for people: the state, and why and when it tries again.
  function describeStatus(state, detail) {
    if (state === "retrying") return `${detail.message} · trying again in ${detail.retryIn} s`;
    if (state === "connecting" && detail.message) return `${detail.message} · trying again now`;
    if (state === "error") return `error: ${detail.message}`;
    return state;
  }

  window.AvatarStage = { params, watchStage, captionBox, describeStatus };

  // The plain viewer page.
  if (document.body && document.body.dataset.page === "watch") {
    const video = document.getElementById("video");
    const state = document.getElementById("state");
    let current = "connecting";
    const setStatus = (text, detail) => {
      current = text;
      // A browser that blocks sound until a click gets the picture muted, and says so.
      const hint = text === "live" && video.muted ? " · click for sound" : "";
      state.textContent = describeStatus(text, detail || {}) + hint;
      document.body.dataset.state = text;
      if (detail && detail.attempt) document.body.dataset.attempts = String(detail.attempt);
    };
    const showCaption = captionBox(document.getElementById("caption"));
    watchStage({
      variant: "main",
      onStream(stream) {
        video.srcObject = stream;
        video.play().catch(() => {
          video.muted = true;
          if (current === "live") setStatus("live");
          return video.play();
        }).catch((err) => console.warn(err));
      },
      onEvent: showCaption,
      onStatus: setStatus,
    });
    video.addEventListener("click", () => {
      video.muted = false;
      video.play().catch((err) => console.warn(err));
      if (current === "live") setStatus("live");
    });
  }
})();
