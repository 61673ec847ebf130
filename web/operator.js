// The operator's desk: sign in, watch every live session (most urgent first), open one to
// see and hear it (the avatar's video and voice, the customer's microphone, over WebRTC), read
// its transcript, the customer's earlier sessions and the brain's suggested replies, take it
// over, type what the avatar says in its own voice (or speak it: voice mode; or drive the face
// from the webcam: camera mode), hand it back. Live updates come over /api/operator/ws.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    signin: $("signin"), form: $("signin-form"), name: $("name"), password: $("password"), signinError: $("signin-error"),
    desk: $("desk"), me: $("me"), link: $("link"), alert: $("alert"), signout: $("signout"),
    list: $("sessions"), count: $("count"), multiText: $("multi-text"), multiSend: $("multi-send"),
    detail: $("detail"), title: $("detail-title"), control: $("detail-control"), reason: $("detail-reason"),
    takeover: $("takeover"), handback: $("handback"), transcript: $("transcript"), suggestions: $("suggestions"),
    sayForm: $("say-form"), sayText: $("say-text"), sayInterrupt: $("say-interrupt"), detailError: $("detail-error"),
    watchVideo: $("watch-video"), watchCustomer: $("watch-customer"), watchState: $("watch-state"),
    voiceMode: $("voice-mode"), cameraMode: $("camera-mode"), modeState: $("mode-state"),
    history: $("history"), historyId: $("history-id"), historyList: $("history-list"),
  };
  const TOKEN_KEY = "avatar.operatorToken";
  // Observable state for people debugging and for the end-to-end tests.
  const panel = window.operatorPanel = {
    operator: null, connected: false, sessions: {}, selected: null, transcripts: {}, alerts: [], errors: [],
    watch: null,  // {sessionId, pc, state}: the live view of the open session
    drive: { sessionId: null, voice: false, camera: false, state: "off" },  // voice and camera modes
    history: {},  // session id -> the customer's earlier sessions
  };
  const checked = new Set();
  let token = sessionStorage.getItem(TOKEN_KEY);
  let ws = null, retry = null, audio = null;

  async function api(method, path, body) {
    const res = await fetch(path, {
      method, headers: { "Authorization": `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const data = await res.json().catch(() => ({}));
    if (res.status === 401 && path !== "/api/operator/login") { signedOut("Your sign-in has expired. Please sign in again."); }
    if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
    return data;
  }

  // -- signing in and out -------------------------------------------------------------------
  ui.form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    ui.signinError.hidden = true;
    unlockAudio();
    try {
      const res = await fetch("/api/operator/login", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: ui.name.value.trim(), password: ui.password.value }),
      });
      const data = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
      token = data.token;
      sessionStorage.setItem(TOKEN_KEY, token);
      ui.password.value = "";
      connect();
    } catch (e) {
      ui.signinError.textContent = e.message; ui.signinError.hidden = false;
    }
  });

  ui.signout.addEventListener("click", async () => {
    try { await api("POST", "/api/operator/logout"); } catch (e) { /* signed out anyway */ }
    signedOut("");
  });

  function signedOut(message) {
    stopWatch(); stopDrive();
    token = null; sessionStorage.removeItem(TOKEN_KEY);
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    clearTimeout(retry);
    panel.connected = false; panel.operator = null;
    ui.desk.hidden = true; ui.signin.hidden = false;
    ui.signinError.textContent = message; ui.signinError.hidden = !message;
  }

  // -- live updates ---------------------------------------------------------------------------
  function connect() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/operator/ws";
    ws = new WebSocket(url);
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
    ws.onclose = (ev) => {
      panel.connected = false; ui.link.classList.remove("on");
      if (ev.code === 4401) { signedOut("Please sign in."); return; }
      retry = setTimeout(connect, 1000);  // the server keeps our sessions for a grace period
    };
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "hello":
        panel.operator = msg.operator; panel.connected = true;
        ui.me.textContent = msg.operator; ui.link.classList.add("on");
        ui.signin.hidden = true; ui.desk.hidden = false;
        panel.sessions = {};
        panel.partial = msg.partial || null;  // the list is one server's own (shared registry down)
        for (const s of msg.sessions) panel.sessions[s.session_id] = s;
        renderList();
        if (panel.partial) setTimeout(refreshPartialList, 5000);
        if (panel.selected && panel.sessions[panel.selected]) openSession(panel.selected); else closeDetail();
        break;
      case "session":
        panel.sessions[msg.session.session_id] = msg.session;
        renderList();
        if (msg.session.session_id === panel.selected) renderDetail();
        break;
      case "session_closed":
        delete panel.sessions[msg.session_id]; checked.delete(msg.session_id);
        renderList();
        if (msg.session_id === panel.selected) closeDetail();
        break;
      case "utterance":
        (panel.transcripts[msg.session_id] ||= []).push(msg);
        if (msg.session_id === panel.selected) appendLine(msg);
        break;
      case "alert":
        panel.alerts.push(msg);
        raiseAlert(msg);
        break;
      case "error": panel.errors.push(msg.message); break;
      default: break;  // caption, transcript (partial), event, presence, pong
    }
  }

  // -- the session list ---------------------------------------------------------------------------
  function urgency(s) {
    if (s.control === "waiting") return [0, -(Date.now() / 1000 - (s.waiting_since || 0))];
    return [s.control === "operator" ? 1 : 2, -(s.emotion || 0)];
  }

  // While the list is partial, ask again now and then: the other servers' sessions come back
  // with the shared registry, and the note goes.
  async function refreshPartialList() {
    if (!panel.partial || !panel.connected) return;
    try {
      const data = await api("GET", "/api/operator/sessions");
      for (const s of data.sessions) panel.sessions[s.session_id] = s;
      panel.partial = data.partial || null;
      renderList();
    } catch (err) { /* signed out or offline: the socket's own handling shows it */ }
    if (panel.partial) setTimeout(refreshPartialList, 5000);
  }

  function renderList() {
    const items = Object.values(panel.sessions).sort((a, b) => {
      const x = urgency(a), y = urgency(b); return x[0] - y[0] || x[1] - y[1];
    });
    ui.count.textContent = panel.partial ? `(${items.length}, ${panel.partial})` : `(${items.length})`;
    ui.list.replaceChildren(...items.map(card));
    if (!items.some((s) => s.control === "waiting")) ui.alert.hidden = true;
  }

  function card(s) {
    const li = document.createElement("li");
    li.className = `card ${s.control}` + (s.session_id === panel.selected ? " selected" : "");
    li.dataset.sessionId = s.session_id;
    const top = document.createElement("div"); top.className = "top";
    const box = document.createElement("input"); box.type = "checkbox"; box.title = "Select for a line to several sessions";
    box.checked = checked.has(s.session_id);
    box.addEventListener("click", (ev) => { ev.stopPropagation(); box.checked ? checked.add(s.session_id) : checked.delete(s.session_id); });
    const name = document.createElement("b"); name.textContent = s.avatar;
    const badge = document.createElement("span"); badge.className = `badge ${s.control}`;
    badge.textContent = s.control === "operator" ? `operator: ${s.holder}` : s.control;
    const waited = document.createElement("span"); waited.className = "waited";
    if (s.control === "waiting" && s.waiting_since) waited.textContent = `waiting ${Math.round(Date.now() / 1000 - s.waiting_since)} s`;
    top.append(box, name, badge, waited);
    const last = document.createElement("div"); last.className = "last";
    last.textContent = s.last_utterance ? `${s.last_utterance.speaker}: ${s.last_utterance.text}` : "—";
    const info = document.createElement("div"); info.className = "info";
    const parts = [];
    if (s.emotion !== null && s.emotion !== undefined) parts.push(`emotion ${Number(s.emotion).toFixed(2)}`);
    if (s.handoff_reason) parts.push(`asks for a human: ${reasonText(s.handoff_reason)}`);
    info.textContent = parts.join(" · ");
    li.append(top, last, info);
    li.addEventListener("click", () => openSession(s.session_id));
    return li;
  }

  setInterval(() => { if (Object.values(panel.sessions).some((s) => s.control === "waiting")) renderList(); }, 1000);

  // The brain's hand-off reason codes, in words an operator reads at a glance.
  const REASONS = {
    customer_request: "the customer asked for a person",
    negative_emotion: "the customer sounds upset",
    repeated_failure: "the AI could not answer twice in a row",
    complaint: "a complaint",
    topic_flagged: "a topic for a person",
  };
  function reasonText(code) { return REASONS[code] || String(code || "").replace(/_/g, " "); }

  // -- alerts: visible and audible ------------------------------------------------------------------
  function unlockAudio() {
    // Browsers only let a page make sound after a gesture: create the context at sign-in.
    try { audio = audio || new (window.AudioContext || window.webkitAudioContext)(); audio.resume(); } catch (e) { audio = null; }
  }

  function beep() {
    if (!audio) return;
    const now = audio.currentTime;
    for (const [at, freq] of [[0, 880], [0.25, 660]]) {
      const osc = audio.createOscillator(), gain = audio.createGain();
      osc.frequency.value = freq; gain.gain.setValueAtTime(0.2, now + at); gain.gain.exponentialRampToValueAtTime(0.001, now + at + 0.2);
      osc.connect(gain).connect(audio.destination); osc.start(now + at); osc.stop(now + at + 0.22);
    }
  }

  function raiseAlert(msg) {
    ui.alert.textContent = `A customer needs a human (${msg.avatar}): ${reasonText(msg.reason)}`;
    ui.alert.hidden = false;
    beep();
  }

  // -- one session ------------------------------------------------------------------------------------
  async function openSession(id) {
    const again = panel.selected === id;
    panel.selected = id;
    renderList();
    ui.detail.hidden = false;
    if (panel.drive.sessionId && panel.drive.sessionId !== id) stopDrive();
    renderDetail();
    if (!again || !panel.watch) startWatch(id).catch((e) => showDetailError(`Live view: ${e.message}`));
    loadHistory(id).catch((e) => showDetailError(`History: ${e.message}`));
    try {
      const data = await api("GET", `/api/sessions/${encodeURIComponent(id)}/transcript`);
      if (panel.selected !== id) return;
      panel.transcripts[id] = data.utterances;
      ui.transcript.replaceChildren();
      data.utterances.forEach(appendLine);
    } catch (e) { showDetailError(e.message); }
  }

  function closeDetail() { stopWatch(); stopDrive(); panel.selected = null; ui.detail.hidden = true; renderList(); }

  // -- live view: the avatar as the customer sees and hears it, and the customer's microphone -----------
  async function peer() {
    // Fetched for every connection: TURN credentials expire (turn_ttl) long before an operator's shift ends.
    let iceServers = [];
    try { iceServers = (await (await fetch("/api/config")).json()).iceServers || []; } catch (e) { iceServers = []; }
    return new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
  }

  function gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
      setTimeout(resolve, 3000);  // an unreachable STUN/TURN server must not hold the view up
    });
  }

  async function startWatch(id) {
    stopWatch();
    const pc = await peer();
    const watch = panel.watch = { sessionId: id, pc, state: "connecting" };
    pc.addTransceiver("audio", { direction: "recvonly" });  // the avatar's voice
    const customer = pc.addTransceiver("audio", { direction: "recvonly" });  // the customer's microphone
    pc.addTransceiver("video", { direction: "recvonly" });
    const view = new MediaStream();
    pc.ontrack = (ev) => {
      if (ev.transceiver === customer) {
        ui.watchCustomer.srcObject = new MediaStream([ev.track]);
        ui.watchCustomer.play().catch(() => {});
        return;
      }
      view.addTrack(ev.track);
      ui.watchVideo.srcObject = view;
      ui.watchVideo.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      watch.state = pc.connectionState;
      if (panel.watch === watch) ui.watchState.textContent = watch.state === "connected" ? "live" : watch.state;
    };
    ui.watchState.textContent = "connecting…";
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const answer = await api("POST", `/api/operator/sessions/${encodeURIComponent(id)}/watch`,
      { sdp: pc.localDescription.sdp, type: "offer" });
    if (panel.watch !== watch) { pc.close(); return; }
    await pc.setRemoteDescription(answer);
  }

  function stopWatch() {
    const watch = panel.watch;
    panel.watch = null;
    ui.watchVideo.srcObject = null; ui.watchCustomer.srcObject = null;
    ui.watchState.textContent = "not connected";
    if (!watch) return;
    watch.pc.close();
    if (token) api("DELETE", `/api/operator/sessions/${encodeURIComponent(watch.sessionId)}/watch`).catch(() => {});
  }

  // -- voice and camera modes: the operator's microphone and webcam drive the avatar ----------------------
  const driveTracks = { voice: null, camera: null };
  let drivePc = null;

  async function setMode(kind, on) {
    const id = panel.selected;
    showDetailError("");
    try {
      if (on && !driveTracks[kind]) {
        const stream = await navigator.mediaDevices.getUserMedia(kind === "voice"
          ? { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } }
          : { video: { width: { ideal: 640 }, height: { ideal: 480 } } });
        driveTracks[kind] = stream.getTracks()[0];
      } else if (!on && driveTracks[kind]) {
        driveTracks[kind].stop(); driveTracks[kind] = null;
      }
      await connectDrive(id);
    } catch (e) {
      if (driveTracks[kind]) { driveTracks[kind].stop(); driveTracks[kind] = null; }
      showDetailError(`${kind === "voice" ? "Voice" : "Camera"} mode: ${e.message}`);
      await connectDrive(id).catch(() => {});
    }
    renderModes();
  }

  async function connectDrive(id) {
    if (drivePc) { drivePc.close(); drivePc = null; }
    const tracks = Object.values(driveTracks).filter(Boolean);
    panel.drive = { sessionId: tracks.length ? id : null, voice: !!driveTracks.voice, camera: !!driveTracks.camera, state: "off" };
    // Your own voice coming back from the avatar would be an echo in your ears: the view is muted meanwhile.
    ui.watchVideo.muted = !!driveTracks.voice;
    if (!tracks.length) {
      api("DELETE", `/api/operator/sessions/${encodeURIComponent(id)}/drive`).catch(() => {});
      return;
    }
    const pc = drivePc = await peer();
    for (const track of tracks) pc.addTransceiver(track, { direction: "sendonly" });
    pc.onconnectionstatechange = () => { if (drivePc === pc) { panel.drive.state = pc.connectionState; renderModes(); } };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const answer = await api("POST", `/api/operator/sessions/${encodeURIComponent(id)}/drive`,
      { sdp: pc.localDescription.sdp, type: "offer" });
    if (drivePc !== pc) return;
    await pc.setRemoteDescription(answer);
    panel.drive.state = "connecting";
  }

  function stopDrive() {
    for (const kind of ["voice", "camera"]) if (driveTracks[kind]) { driveTracks[kind].stop(); driveTracks[kind] = null; }
    if (drivePc) { drivePc.close(); drivePc = null; }
    panel.drive = { sessionId: null, voice: false, camera: false, state: "off" };
    ui.watchVideo.muted = false;
    renderModes();
  }

  function renderModes() {
    ui.voiceMode.setAttribute("aria-pressed", String(panel.drive.voice));
    ui.cameraMode.setAttribute("aria-pressed", String(panel.drive.camera));
    const on = [panel.drive.voice && "your voice", panel.drive.camera && "your face"].filter(Boolean);
    ui.modeState.textContent = on.length ? `The avatar has ${on.join(" and ")} (${panel.drive.state}).` : "";
  }

  ui.voiceMode.addEventListener("click", () => setMode("voice", !panel.drive.voice));
  ui.cameraMode.addEventListener("click", () => setMode("camera", !panel.drive.camera));

  // -- the customer's history (earlier sessions with the same customer id) --------------------------------
  async function loadHistory(id) {
    ui.history.hidden = true;
    const s = panel.sessions[id];
    if (!s || !s.customer_id) return;
    const data = await api("GET", `/api/operator/sessions/${encodeURIComponent(id)}/history`);
    if (panel.selected !== id) return;
    panel.history[id] = data.sessions;
    ui.historyId.textContent = `(customer ${data.customer_id}: ${data.sessions.length})`;
    ui.historyList.replaceChildren(...data.sessions.map((past) => {
      const li = document.createElement("li"); li.className = "past"; li.dataset.sessionId = past.session_id;
      const when = document.createElement("b");
      when.textContent = past.started ? new Date(past.started * 1000).toLocaleString() : past.session_id;
      li.append(when, ...past.utterances.map((u) => {
        const p = document.createElement("p"); p.textContent = `${u.speaker}: ${u.text}`; return p;
      }));
      return li;
    }));
    ui.history.hidden = false;
  }

  function renderDetail() {
    const s = panel.sessions[panel.selected];
    if (!s) return;
    const mine = s.control === "operator" && s.holder === panel.operator;
    ui.title.textContent = `${s.avatar} · ${s.session_id}`;
    ui.control.textContent = s.control === "operator" ? `operator: ${s.holder}` : s.control;
    ui.control.className = `badge ${s.control}`;
    ui.takeover.hidden = mine; ui.takeover.disabled = s.control === "operator";
    ui.handback.hidden = !(mine || s.control === "waiting");
    ui.sayText.disabled = !mine; ui.sayForm.querySelector("button").disabled = !mine;
    ui.voiceMode.disabled = !mine; ui.cameraMode.disabled = !mine;
    if (!mine && panel.drive.sessionId === s.session_id) stopDrive();  // handed back, or taken by the grace period
    ui.reason.hidden = !s.handoff_reason; ui.reason.textContent = s.handoff_reason ? `Asks for a human: ${reasonText(s.handoff_reason)}` : "";
    const suggestions = (s.suggestions || []).map((x) => (typeof x === "string" ? x : x.text || x.answer || "")).filter(Boolean);
    ui.suggestions.replaceChildren(...suggestions.map((text) => {
      const b = document.createElement("button"); b.type = "button"; b.textContent = text;
      b.title = "Put this answer in the box to edit and send";
      b.addEventListener("click", () => { ui.sayText.value = text; ui.sayText.focus(); });
      return b;
    }));
  }

  function appendLine(u) {
    const li = document.createElement("li");
    const kind = u.speaker === "customer" ? "customer" : u.speaker === "ai" ? "ai" : "operator";
    li.className = kind + (u.interrupted ? " cut" : "");
    const who = document.createElement("span"); who.className = "who";
    who.textContent = `${u.speaker} · ${new Date(u.ended * 1000).toLocaleTimeString()}`;
    li.append(who, document.createTextNode(u.text));
    ui.transcript.appendChild(li);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function showDetailError(text) {
    panel.errors.push(text);
    ui.detailError.textContent = text; ui.detailError.hidden = !text;
  }

  ui.takeover.addEventListener("click", async () => {
    showDetailError("");
    try { const r = await api("POST", `/api/sessions/${encodeURIComponent(panel.selected)}/takeover`); panel.sessions[r.session.session_id] = r.session; renderList(); renderDetail(); }
    catch (e) { showDetailError(e.message); }
  });
  ui.handback.addEventListener("click", async () => {
    showDetailError("");
    stopDrive();
    try { const r = await api("POST", `/api/sessions/${encodeURIComponent(panel.selected)}/handback`); panel.sessions[r.session.session_id] = r.session; renderList(); renderDetail(); }
    catch (e) { showDetailError(e.message); }
  });
  ui.sayForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = ui.sayText.value.trim();
    if (!text) return;
    showDetailError("");
    try {
      await api("POST", `/api/sessions/${encodeURIComponent(panel.selected)}/say`, { text, interrupt: ui.sayInterrupt.checked });
      ui.sayText.value = "";
    } catch (e) { showDetailError(e.message); }
  });
  ui.sayText.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); ui.sayForm.requestSubmit(); }
  });
  ui.multiSend.addEventListener("click", async () => {
    const text = ui.multiText.value.trim();
    if (!text || checked.size === 0) return;
    try { await api("POST", "/api/operator/say", { sessions: [...checked], text }); ui.multiText.value = ""; }
    catch (e) { showDetailError(e.message); }
  });

  if (token) connect();  // a reload keeps the sign-in of this tab
})();
