// The operator's desk: sign in, watch every live session (most urgent first), open one to
// read its transcript and the brain's suggested replies, take it over, type what the avatar
// says in its own voice, hand it back. Live updates come over /api/operator/ws.
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
  };
  const TOKEN_KEY = "avatar.operatorToken";
  // Observable state for people debugging and for the end-to-end tests.
  const panel = window.operatorPanel = {
    operator: null, connected: false, sessions: {}, selected: null, transcripts: {}, alerts: [], errors: [],
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
        for (const s of msg.sessions) panel.sessions[s.session_id] = s;
        renderList();
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

  function renderList() {
    const items = Object.values(panel.sessions).sort((a, b) => {
      const x = urgency(a), y = urgency(b); return x[0] - y[0] || x[1] - y[1];
    });
    ui.count.textContent = `(${items.length})`;
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
    if (s.handoff_reason) parts.push(`asks for a human: ${s.handoff_reason}`);
    info.textContent = parts.join(" · ");
    li.append(top, last, info);
    li.addEventListener("click", () => openSession(s.session_id));
    return li;
  }

  setInterval(() => { if (Object.values(panel.sessions).some((s) => s.control === "waiting")) renderList(); }, 1000);

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
    ui.alert.textContent = `A customer needs a human (${msg.avatar}): ${msg.reason}`;
    ui.alert.hidden = false;
    beep();
  }

  // -- one session ------------------------------------------------------------------------------------
  async function openSession(id) {
    panel.selected = id;
    renderList();
    ui.detail.hidden = false;
    renderDetail();
    try {
      const data = await api("GET", `/api/sessions/${encodeURIComponent(id)}/transcript`);
      if (panel.selected !== id) return;
      panel.transcripts[id] = data.utterances;
      ui.transcript.replaceChildren();
      data.utterances.forEach(appendLine);
    } catch (e) { showDetailError(e.message); }
  }

  function closeDetail() { panel.selected = null; ui.detail.hidden = true; renderList(); }

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
    ui.reason.hidden = !s.handoff_reason; ui.reason.textContent = s.handoff_reason ? `Asks for a human: ${s.handoff_reason}` : "";
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
