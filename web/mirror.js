// The mirror page: the camera goes to the server as a WebRTC video track; the server tracks the
// face (avatar.face.FacePuppet) and sends back the chosen avatar making the same face.
// Protocol: POST /api/offer {sdp, type, avatar, mode: "mirror"} -> {sdp, type, session_id};
// an audio transceiver (recvonly) and one video transceiver, sendrecv: our camera out, the
// avatar's video in. Optional data
// channel "events": {"type": "face", "found": bool} updates the avatar pane's label.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $("start"), stop: $("stop"), camera: $("camera"), avatar: $("avatar"), select: $("avatar-select"),
    message: $("message"), dot: $("live-dot"), camHint: $("camera-placeholder"), avHint: $("avatar-placeholder"),
    label: $("avatar-label"), sound: $("sound"),
  };
  // Observable state for people debugging and for end-to-end tests.
  const client = window.mirrorClient = { sessionId: null, connected: false, receiving: false, errors: [], faceFound: null, pc: null };
  let pc = null, camStream = null;

  function showMessage(text, kind = "error") {
    ui.message.textContent = text;
    ui.message.className = "message" + (kind === "info" ? " info" : "");
    ui.message.hidden = !text;
  }

  async function loadAvatars() {
    try {
      const data = await (await fetch("/api/avatars")).json();
      const wanted = new URLSearchParams(location.search).get("avatar") || data.default;
      for (const a of data.avatars) {
        const opt = document.createElement("option");
        opt.value = a.name;
        opt.textContent = (a.title || a.name) + (a.kind ? ` (${a.kind})` : "");
        if (a.name === wanted) opt.selected = true;
        ui.select.appendChild(opt);
      }
    } catch (e) { /* the server's default avatar is used */ }
  }

  function waitForIceGathering(peer) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (peer.iceGatheringState === "complete") { peer.removeEventListener("icegatheringstatechange", check); resolve(); }
      };
      peer.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000);  // an unreachable STUN/TURN server must not hold the call
    });
  }

  async function openCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This browser cannot use a camera here (a secure https:// page is needed). 此浏览器无法使用摄像头。");
    }
    try {
      return await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 25, max: 30 }, facingMode: "user" },
        audio: false,
      });
    } catch (e) {
      if (e && (e.name === "NotAllowedError" || e.name === "SecurityError")) {
        throw new Error("Camera permission was refused: allow the camera to drive the avatar. 请允许使用摄像头。");
      }
      if (e && e.name === "NotFoundError") throw new Error("No camera found. 未找到摄像头。");
      throw new Error(`The camera could not be opened (${e && e.name ? e.name : e}). 无法打开摄像头。`);
    }
  }

  async function start() {
    ui.start.disabled = true;
    showMessage("");
    try {
      camStream = await openCamera();
      ui.camera.srcObject = camStream;
      ui.camHint.hidden = true;
      ui.camera.play().catch(() => {});

      let config = {};
      try { config = await (await fetch("/api/config")).json(); } catch (e) { /* no STUN/TURN: fine on a LAN */ }
      pc = client.pc = new RTCPeerConnection({ iceServers: config.iceServers || [], bundlePolicy: "max-bundle" });
      // The server's media: audio (the avatar's voice, silent unless it speaks) and video.
      pc.addTransceiver("audio", { direction: "recvonly" });
      const camTrack = camStream.getVideoTracks()[0];
      pc.addTransceiver(camTrack, { direction: "sendrecv", streams: [camStream] });
      pc.ontrack = (ev) => {
        if (ev.track.kind === "audio") {
          ui.sound.srcObject = new MediaStream([ev.track]);
          ui.sound.play().catch(() => {});
          return;
        }
        ui.avatar.srcObject = new MediaStream([ev.track]);
        ui.avatar.play().catch(() => {});
      };
      ui.avatar.addEventListener("playing", () => { client.receiving = true; ui.avHint.hidden = true; }, { once: true });
      pc.onconnectionstatechange = () => {
        const s = pc ? pc.connectionState : "closed";
        client.connected = s === "connected";
        ui.dot.classList.toggle("live", client.connected);
        if (s === "failed") fail("The connection failed. Check your network and try again. 连接失败，请重试。");
        if (s === "disconnected") showMessage("Connection unstable, reconnecting… 网络不稳定，正在重连…", "info");
        if (s === "connected") showMessage("");
      };
      const channel = pc.createDataChannel("events");
      channel.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch (e) { return; }
        if (msg && msg.type === "face") {
          client.faceFound = !!msg.found;
          ui.label.textContent = msg.found ? "Avatar · 数字人" : "Looking for your face… 正在寻找您的脸…";
        }
      };

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      const res = await fetch("/api/offer", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          sdp: pc.localDescription.sdp, type: pc.localDescription.type, avatar: ui.select.value || undefined, mode: "mirror",
        }),
      });
      const text = await res.text();
      let answer = {};
      try { answer = JSON.parse(text); } catch (e) { /* errors come as plain text */ }
      if (res.status === 503) throw new Error("The server is busy right now. Please try again in a minute. 服务器繁忙，请稍后再试。");
      if (!res.ok) {
        const reason = answer.error || (text && !text.trimStart().startsWith("<") ? text.slice(0, 200) : "");
        throw new Error(reason || `The server refused the mirror (HTTP ${res.status}).`);
      }
      client.sessionId = answer.session_id;
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
      ui.stop.disabled = false;
      ui.select.disabled = true;
    } catch (e) {
      fail(e.message || String(e));
    }
  }

  function fail(text) {
    client.errors.push(text);
    stop();
    showMessage(text);
  }

  function stop() {
    if (pc) { pc.close(); pc = client.pc = null; }
    if (camStream) { camStream.getTracks().forEach((t) => t.stop()); camStream = null; }
    ui.camera.srcObject = null;
    ui.avatar.srcObject = null;
    ui.sound.srcObject = null;
    ui.camHint.hidden = false;
    ui.avHint.hidden = false;
    ui.label.textContent = "Avatar · 数字人";
    client.connected = client.receiving = false;
    client.sessionId = null;
    ui.dot.classList.remove("live");
    ui.start.disabled = false;
    ui.stop.disabled = true;
    ui.select.disabled = false;
    showMessage("");
  }

  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  window.addEventListener("pagehide", stop);
  loadAvatars();
})();
