// The transparent overlay: the stage's "overlay" video carries colour (top) and the alpha matte
// as grey (bottom) in one frame, GAP rows apart (avatar/rtc/fanout.py OVERLAY_GAP); this page
// composites them into a transparent canvas with WebGL (canvas 2D when WebGL is unavailable). No chroma key: edges keep their real,
// anti-aliased alpha. Matte values within a few levels of 0 or 1 (codec noise) are snapped.
"use strict";

(function () {
  const { params, watchStage, captionBox, describeStatus } = window.AvatarStage;
  const canvas = document.getElementById("avatar");
  const video = document.getElementById("source");
  const caption = document.getElementById("caption");
  const diag = document.getElementById("diag");
  const body = document.body;
  // Matte levels below LOW are transparent, above HIGH opaque (in 0..1 after decoding).
  const LOW = 0.03;
  const HIGH = 0.97;
  const GAP = 16;

  // -- captions, styled by URL parameters ----------------------------------------------------
  const cssColour = (value) => (/^[0-9a-fA-F]{3,8}$/.test(value) ? `#${value}` : value);
  const showCaptions = params.get("captions") !== "0";
  if (params.get("font")) caption.style.fontFamily = params.get("font");
  if (params.get("size")) caption.style.fontSize = `${parseFloat(params.get("size")) || 28}px`;
  if (params.get("color")) caption.style.color = cssColour(params.get("color"));
  if (params.get("bg")) caption.style.background = params.get("bg") === "none" ? "transparent" : cssColour(params.get("bg"));
  if (params.get("position") === "top") caption.classList.add("top");
  if (params.get("debug") === "1") diag.hidden = false;
  const onCaption = captionBox(caption);

  // -- compositing -----------------------------------------------------------------------------
  function webglCompositor() {
    const gl = canvas.getContext("webgl", { alpha: true, premultipliedAlpha: true, antialias: false });
    if (!gl) return null;
    const vs = `attribute vec2 p; varying vec2 uv;
      void main() { uv = vec2(p.x * 0.5 + 0.5, 0.5 - p.y * 0.5); gl_Position = vec4(p, 0.0, 1.0); }`;
    const fs = `precision mediump float;
      uniform sampler2D frame; uniform float part; uniform float matte; uniform float texel; varying vec2 uv;
      void main() {
        // Colour from the top part, alpha from the bottom one; never sample across into the gap.
        vec3 colour = texture2D(frame, vec2(uv.x, clamp(uv.y * part, texel, part - texel))).rgb;
        float a = texture2D(frame, vec2(uv.x, clamp(matte + uv.y * part, matte + texel, 1.0 - texel))).g;
        a = clamp((a - ${LOW}) / (${HIGH} - ${LOW}), 0.0, 1.0);
        gl_FragColor = vec4(colour * a, a);  // premultiplied, as the page compositor expects
      }`;
    const program = gl.createProgram();
    for (const [type, source] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
      const shader = gl.createShader(type);
      gl.shaderSource(shader, source);
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) { console.warn(gl.getShaderInfoLog(shader)); return null; }
      gl.attachShader(program, shader);
    }
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) return null;
    gl.useProgram(program);
    gl.bindBuffer(gl.ARRAY_BUFFER, gl.createBuffer());
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const p = gl.getAttribLocation(program, "p");
    gl.enableVertexAttribArray(p);
    gl.vertexAttribPointer(p, 2, gl.FLOAT, false, 0, 0);
    gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    const texel = gl.getUniformLocation(program, "texel");
    const part = gl.getUniformLocation(program, "part");
    const matte = gl.getUniformLocation(program, "matte");
    return function draw(w, h) {
      const total = 2 * h + GAP;
      gl.viewport(0, 0, w, h);
      gl.uniform1f(texel, 0.5 / total);
      gl.uniform1f(part, h / total);
      gl.uniform1f(matte, (h + GAP) / total);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB, gl.RGB, gl.UNSIGNED_BYTE, video);
      gl.clearColor(0, 0, 0, 0);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    };
  }

  function canvas2dCompositor() {
    const ctx = canvas.getContext("2d");
    const work = document.createElement("canvas");
    const wctx = work.getContext("2d", { willReadFrequently: true });
    const low = LOW * 255;
    const scale = 255 / ((HIGH - LOW) * 255);
    return function draw(w, h) {
      if (work.width !== w || work.height !== 2 * h + GAP) { work.width = w; work.height = 2 * h + GAP; }
      wctx.drawImage(video, 0, 0);
      const src = wctx.getImageData(0, 0, w, 2 * h + GAP).data;
      const out = ctx.createImageData(w, h);
      const dst = out.data;
      const matte = w * (h + GAP) * 4;
      for (let i = 0; i < w * h * 4; i += 4) {
        const a = Math.min(255, Math.max(0, (src[matte + i + 1] - low) * scale));
        dst[i] = src[i]; dst[i + 1] = src[i + 1]; dst[i + 2] = src[i + 2]; dst[i + 3] = a;
      }
      ctx.putImageData(out, 0, 0);
    };
  }

  let draw = null;
  let frames = 0;
  function paint() {
    const w = video.videoWidth;
    const h = (video.videoHeight - GAP) / 2;
    if (!w || !h) return;
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    if (!draw) {
      const webgl = params.get("render") === "2d" ? null : webglCompositor();
      draw = webgl || canvas2dCompositor();
      body.dataset.renderer = webgl ? "webgl" : "2d";
    }
    draw(w, h);
    frames += 1;
    body.dataset.frames = String(frames);
  }

  function loop() {
    if (video.requestVideoFrameCallback) {
      const next = () => { paint(); video.requestVideoFrameCallback(next); };
      video.requestVideoFrameCallback(next);
    } else {
      const next = () => { if (video.readyState >= 2) paint(); requestAnimationFrame(next); };
      requestAnimationFrame(next);
    }
  }

  watchStage({
    variant: "overlay",
    onStream(stream) {
      video.srcObject = stream;
      video.muted = params.get("muted") === "1";
      // Sound where the browser allows it (OBS does); otherwise the picture plays muted.
      video.play().catch(() => { video.muted = true; return video.play(); }).catch((err) => console.warn(err));
    },
    onEvent(message) { if (showCaptions) onCaption(message); },
    onStatus(state, detail) {
      // Not live (a wrong key, a stage not on air, a lost connection): nothing is drawn, so a
      // stage that ended leaves no frozen face on air. The page keeps trying (watch.js); why it
      // is not live goes to the console, and on screen only with ?debug=1 (never on air by default).
      body.dataset.state = state;
      body.dataset.attempts = String(detail.attempt || 0);
      diag.textContent = `overlay: ${describeStatus(state, detail)} (attempt ${detail.attempt || 0})`;
    },
  });
  loop();
})();
