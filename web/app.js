// The customer's video call page: WebRTC to the avatar server, captions with the word
// being spoken highlighted, typed questions, and the microphone (voice turns, barge-in).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $("start"), overlay: $("start-overlay"), video: $("video"), audio: $("audio"),
    captions: $("captions"), live: $("live-transcript"), message: $("message"), state: $("state"),
    form: $("composer"), text: $("text"), send: $("send"), mic: $("mic"), hangup: $("hangup"),
    avatar: $("avatar-select"), dot: $("live-dot"),
  };
  const MUTED_HINT = "Microphone muted · 麦克风已静音";
  const STATE_LABELS = { idle: "", speaking: "Speaking · 正在说话", listening: "Listening · 正在聆听", thinking: "Thinking · 思考中" };
  // Observable state for people debugging and for the end-to-end tests.
  const client = window.avatarClient = {
    sessionId: null, connected: false, captions: [], states: [], errors: [], transcripts: [], pc: null, channel: null,
    state: "idle", muted: false,
  };
  let pc = null, channel = null, micTrack = null, captionTimers = [];

  function showMessage(text, kind = "error") {
    ui.message.textContent = text;
    ui.message.className = "message" + (kind === "info" ? " info" : "");
    ui.message.hidden = !text;
  }

  async function loadAvatars() {
    try {
      const res = await fetch("/api/avatars");
      const data = await res.json();
      const wanted = new URLSearchParams(location.search).get("avatar") || data.default;
      for (const a of data.avatars) {
        const opt = document.createElement("option");
        opt.value = a.name; opt.textContent = a.title || a.name;
        if (a.name === wanted) opt.selected = true;
        ui.avatar.appendChild(opt);
      }
    } catch (e) { /* the call still works with the server's default avatar */ }
  }

  async function getMicrophone() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return null;
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      return stream.getAudioTracks()[0] || null;
    } catch (e) {
      showMessage("Microphone unavailable: you can still type your questions. 麦克风不可用，您仍可输入文字。", "info");
      return null;
    }
  }

  function waitForIceGathering(peer) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => { if (peer.iceGatheringState === "complete") { peer.removeEventListener("icegatheringstatechange", check); resolve(); } };
      peer.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000);  // don't wait forever for an unreachable STUN/TURN server
    });
  }

  async function start() {
    ui.start.disabled = true;
    showMessage("");
    try {
      const config = await (await fetch("/api/config")).json();
      pc = client.pc = new RTCPeerConnection({ iceServers: config.iceServers || [], bundlePolicy: "max-bundle" });
      micTrack = await getMicrophone();
      if (micTrack) pc.addTransceiver(micTrack, { direction: "sendrecv" });
      else pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
      const stream = new MediaStream();
      pc.ontrack = (ev) => {
        stream.addTrack(ev.track);
        if (ev.track.kind === "video") { ui.video.srcObject = stream; }
        else { ui.audio.srcObject = new MediaStream([ev.track]); }
      };
      pc.onconnectionstatechange = () => {
        const s = pc.connectionState;
        client.connected = s === "connected";
        ui.dot.classList.toggle("live", client.connected);
        if (s === "failed") fail("The connection failed. Check your network and try again. 连接失败，请检查网络后重试。");
        if (s === "disconnected") showMessage("Connection unstable, reconnecting… 网络不稳定，正在重连…", "info");
        if (s === "connected") showMessage("");
      };
      channel = client.channel = pc.createDataChannel("events");
      channel.onmessage = (ev) => onEvent(JSON.parse(ev.data));
      channel.onopen = () => setComposer(true);
      channel.onclose = () => setComposer(false);

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      const res = await fetch("/api/offer", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          sdp: pc.localDescription.sdp, type: pc.localDescription.type, avatar: ui.avatar.value || undefined,
          // The bank's id for this customer, when the embedding app passes one: operators then see earlier sessions.
          customer_id: new URLSearchParams(location.search).get("customer_id") || undefined,
        }),
      });
      const answer = await res.json().catch(() => ({}));
      if (res.status === 503) throw new Error("All our assistants are busy right now. Please try again in a minute. 当前咨询人数较多，请稍后再试。");
      if (!res.ok) throw new Error(answer.error || `The server refused the call (HTTP ${res.status}).`);
      client.sessionId = answer.session_id;
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
      ui.overlay.hidden = true;
      ui.hangup.disabled = false;
      ui.video.play().catch(() => {});
      ui.audio.play().catch(() => {});
    } catch (e) {
      fail(e.message || String(e));
    }
  }

  function fail(text) {
    client.errors.push(text);
    showMessage(text);
    hangup(false);
  }

  function hangup(clearMessage = true) {
    stopCaption();  // the voice stopped: no highlight left frozen mid-sentence
    if (micTrack) { micTrack.stop(); micTrack = null; }
    if (pc) { pc.close(); pc = client.pc = null; }
    channel = client.channel = null;
    client.connected = false;
    ui.dot.classList.remove("live");
    setComposer(false);
    ui.hangup.disabled = true;
    ui.overlay.hidden = false;
    ui.start.disabled = false;
    ui.state.textContent = "";
    delete ui.state.dataset.state;
    ui.live.textContent = "";
    client.muted = false;
    ui.mic.setAttribute("aria-pressed", "false");
    if (clearMessage) showMessage("");
  }

  function setComposer(on) {
    ui.text.disabled = ui.send.disabled = !on;
    ui.mic.disabled = !on || !micTrack;
  }

  function onEvent(msg) {
    switch (msg.type) {
      case "caption": showCaption(msg); break;
      case "state":
        client.states.push(msg.state);
        client.state = msg.state;
        ui.state.textContent = STATE_LABELS[msg.state] ?? msg.state;
        ui.state.dataset.state = msg.state;
        break;
      case "transcript":
        client.transcripts.push(msg);
        if (msg.speaker === "customer") {
          // While the customer speaks, what has been recognised so far; the final line replaces it.
          ui.live.textContent = msg.final ? (client.muted ? MUTED_HINT : "") : msg.text;
          if (msg.final) showCustomerLine(msg.text);
        } else if (msg.interrupted) {
          stopCaption();
        }
        break;
      case "error": client.errors.push(msg.message); showMessage(msg.message); break;
      default: break;
    }
  }

  // The avatar was cut off: stop the word highlighting where the voice stopped.
  function stopCaption() {
    captionTimers.forEach(clearTimeout); captionTimers = [];
    ui.captions.querySelectorAll(".w.future, .w.current").forEach((s) => { s.className = "w cut"; });
  }

  function showCustomerLine(text) {
    ui.captions.innerHTML = "";
    const p = document.createElement("div");
    p.className = "from-customer";
    p.textContent = "You · 您: " + text;
    ui.captions.appendChild(p);
  }

  // Words are highlighted on the page's own timer from the moment the caption arrives
  // (the server sends it when the sentence starts playing), delayed by the receive buffer.
  function showCaption(msg) {
    client.captions.push(msg);
    captionTimers.forEach(clearTimeout); captionTimers = [];
    ui.captions.innerHTML = "";
    // Chinese runs its characters together, also in a line tagged with another language.
    const sep = msg.lang === "zh" || /^[^\s]*[\u3400-\u9fff][^\s]*$/.test(msg.text || "") ? "" : " ";
    const spans = [];
    if (!msg.words || msg.words.length === 0) {
      const s = document.createElement("span"); s.className = "w spoken"; s.textContent = msg.text;
      ui.captions.appendChild(s);
      return;
    }
    const pieces = wordPieces(msg.text || "", msg.words);
    msg.words.forEach((w, i) => {
      const s = document.createElement("span");
      s.className = "w future"; s.textContent = pieces ? pieces[i].word : w.text;
      ui.captions.appendChild(s);
      const gap = pieces ? pieces[i].gap : (i < msg.words.length - 1 ? sep : "");
      if (gap) ui.captions.appendChild(document.createTextNode(gap));
      spans.push(s);
    });
    const delayMs = playoutDelayMs();
    msg.words.forEach((w, i) => {
      captionTimers.push(setTimeout(() => {
        spans.forEach((s, j) => { s.className = "w " + (j < i ? "spoken" : j === i ? "current" : "future"); });
      }, w.start * 1000 + delayMs));
    });
    captionTimers.push(setTimeout(() => spans.forEach((s) => { s.className = "w spoken"; }), msg.duration * 1000 + delayMs));
  }

  // The timed words carry no punctuation ("mean", not "mean?"): cut the sentence's own text at
  // the words, in order, so each word keeps the punctuation after it and the spaces between them
  // are the sentence's. null when a word is not found (a TTS that rewrote it): plain words then.
  function wordPieces(text, words) {
    const lower = text.toLowerCase();
    const starts = [];
    let cursor = 0;
    for (const w of words) {
      const at = w.text ? lower.indexOf(w.text.toLowerCase(), cursor) : -1;
      if (at < 0) return null;
      starts.push(at); cursor = at + w.text.length;
    }
    return words.map((w, i) => {
      const from = i === 0 ? 0 : starts[i];
      const chunk = text.slice(from, i + 1 < words.length ? starts[i + 1] : text.length);
      const word = chunk.trimEnd();
      return { word: i === 0 ? word.trimStart() : word, gap: chunk.slice(word.length) };
    });
  }

  function playoutDelayMs() {
    try {
      const r = pc && pc.getReceivers().find((x) => x.track && x.track.kind === "audio");
      return r && r.jitterBufferTarget ? r.jitterBufferTarget : 80;
    } catch (e) { return 80; }
  }

  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.text.value.trim();
    if (!text || !channel || channel.readyState !== "open") return;
    channel.send(JSON.stringify({ type: "text", text }));
    ui.text.value = "";
  });
  // Muting sends silence (the track stays on the call), so the avatar neither hears nor
  // waits on the customer until they unmute.
  ui.mic.addEventListener("click", () => {
    if (!micTrack) return;
    micTrack.enabled = !micTrack.enabled;
    client.muted = !micTrack.enabled;
    ui.mic.setAttribute("aria-pressed", String(client.muted));
    ui.mic.title = client.muted ? "Unmute microphone" : "Mute microphone";
    ui.mic.setAttribute("aria-label", ui.mic.title);
    ui.live.textContent = client.muted ? MUTED_HINT : "";
  });
  ui.start.addEventListener("click", start);
  ui.hangup.addEventListener("click", () => hangup());
  window.addEventListener("pagehide", () => { if (pc) pc.close(); });
  loadAvatars();
})();
