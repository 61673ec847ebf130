// Live comments of broadcast stages on the operator's desk: each stage's queue (picked comments
// first), what is on air, the show script's state, and for each waiting comment Pick (answer
// next), Skip, and Answer (typed by the operator, spoken in the avatar's voice).
// A separate script: it signs in with the desk's own token (sessionStorage) and listens on its
// own /api/operator/ws socket for "comments" messages; the rest of the page is operator.js's.
"use strict";

(() => {
  const TOKEN_KEY = "avatar.operatorToken";
  // Observable state for people debugging and for the end-to-end tests.
  const state = window.operatorComments = { stages: {}, errors: [], connected: false };
  let ws = null, token = null, retry = null, root = null;

  const css = document.createElement("link");
  css.rel = "stylesheet"; css.href = "/operator-comments.css";
  document.head.append(css);

  function el(tag, props = {}, ...children) {
    const { dataset, ...rest } = props;
    const node = Object.assign(document.createElement(tag), rest);
    Object.assign(node.dataset, dataset || {});
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  async function api(method, path, body) {
    const res = await fetch(path, {
      method, headers: { "Authorization": `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(data.error || `${res.status}`);
    return data;
  }

  function mount() {
    if (root) return root;
    const list = document.querySelector("#desk .list") || document.body;
    root = el("section", { id: "comment-desk", className: "comment-desk", hidden: true },
      el("h2", { textContent: "Live comments · 直播评论" }), el("div", { className: "stages" }));
    list.append(root);
    return root;
  }

  // -- the socket ----------------------------------------------------------------------------------------
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${proto}://${location.host}/api/operator/ws`);
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
    ws.onclose = () => {
      state.connected = false; ws = null;
      if (sessionStorage.getItem(TOKEN_KEY) === token) retry = setTimeout(connect, 2000);
    };
  }

  async function onMessage(msg) {
    if (msg.type === "hello") {
      state.connected = true;
      await loadAll();
    } else if (msg.type === "comments") {
      state.stages[msg.stage_id] = msg;
      render();
    } else if (msg.type === "session_closed" && state.stages[msg.session_id]) {
      delete state.stages[msg.session_id];
      render();
    }
  }

  async function loadAll() {
    try {
      const { stages } = await api("GET", "/api/stages");
      const fresh = {};
      for (const s of stages) {
        fresh[s.stage_id] = { ...(await api("GET", `/api/stages/${s.stage_id}/comments`)), avatar: s.avatar };
      }
      state.stages = fresh;
      render();
    } catch (err) {
      state.errors.push(String(err.message || err));
    }
  }

  // -- drawing --------------------------------------------------------------------------------------------
  function render() {
    const box = mount();
    const holder = box.querySelector(".stages");
    holder.replaceChildren();
    const ids = Object.keys(state.stages);
    box.hidden = ids.length === 0;
    for (const id of ids) holder.append(stageBox(id, state.stages[id]));
  }

  function stageBox(id, s) {
    const script = s.script || {};
    const scriptLine = script.state && script.state !== "none"
      ? `Script “${script.title}”: ${script.state}${script.reason ? ` (${script.reason})` : ""} · ${script.position}/${script.steps}`
      : "No script";
    const air = s.on_air
      ? (s.on_air.kind === "comment" ? `On air: ${s.on_air.comment.user} — ${s.on_air.comment.text}` : "On air: script line")
      : "On air: —";
    const list = el("ol", { className: "queue" });
    (s.comments || []).forEach((c, index) => list.append(commentItem(id, c, index)));
    if (!(s.comments || []).length) list.append(el("li", { className: "empty", textContent: "No comments waiting" }));
    const done = el("ol", { className: "done" });
    for (const h of (s.history || []).slice(0, 5)) {
      done.append(el("li", { className: h.status, textContent: `${h.user}: ${h.text} — ${h.status}${h.by && h.by !== "ai" ? ` by ${h.by}` : ""}` }));
    }
    return el("article", { className: "stage", dataset: { stage: id } },
      el("h3", { textContent: `Stage ${id}${s.avatar ? ` · ${s.avatar}` : ""}` }),
      el("p", { className: "script", textContent: scriptLine }),
      el("p", { className: "air", textContent: air }),
      list,
      done.childElementCount ? el("details", {}, el("summary", { textContent: "Recently handled" }), done) : null);
  }

  function commentItem(stageId, c, index) {
    const item = el("li", { className: "comment", dataset: { comment: c.id } },
      el("span", { className: "user", textContent: c.user }),
      el("span", { className: "text", textContent: c.text }));
    const pick = el("button", { type: "button", className: "pick", textContent: index === 0 ? "Next" : "Pick", title: "Answer this next" });
    const skip = el("button", { type: "button", className: "skip", textContent: "Skip" });
    const answer = el("button", { type: "button", className: "answer", textContent: "Answer" });
    pick.disabled = index === 0;
    pick.onclick = () => act(stageId, c.id, "pick");
    skip.onclick = () => act(stageId, c.id, "skip");
    answer.onclick = () => {
      const form = el("form", { className: "hand" },
        el("textarea", { maxLength: 1000, rows: 2, placeholder: "Your answer, in the avatar's voice · 您的回答" }),
        el("button", { type: "submit", className: "primary", textContent: "Say" }));
      form.onsubmit = (ev) => {
        ev.preventDefault();
        const text = form.querySelector("textarea").value.trim();
        if (text) act(stageId, c.id, "answer", { text });
      };
      answer.replaceWith(form);
      form.querySelector("textarea").focus();
    };
    item.append(el("span", { className: "actions" }, pick, skip, answer));
    return item;
  }

  async function act(stageId, commentId, action, body) {
    try {
      await api("POST", `/api/stages/${stageId}/comments/${commentId}/${action}`, body);
    } catch (err) {
      state.errors.push(String(err.message || err));
      const box = mount().querySelector(`[data-stage="${stageId}"]`);
      if (box) box.append(el("p", { className: "error", textContent: String(err.message || err) }));
    }
  }

  // -- follow the desk's sign-in ---------------------------------------------------------------------------
  function watchSignIn() {
    const current = sessionStorage.getItem(TOKEN_KEY);
    if (current !== token) {
      token = current;
      clearTimeout(retry);
      if (ws) { ws.onclose = null; ws.close(); ws = null; }
      state.stages = {}; state.connected = false;
      render();
      if (token) connect();
    }
  }
  watchSignIn();
  setInterval(watchSignIn, 1000);
})();
