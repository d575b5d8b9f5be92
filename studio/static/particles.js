// Dreamy particles: a picture as coloured particles drifting around their homes, drawn on a canvas.
// The same simulation as dreamy/particles.py (which renders the downloadable GIF): coordinates in
// [0, 1], `across` particles per row, a periodic drift so the animation loops. No libraries, no CDN.
(() => {
  const PERIOD_S = 4.0;
  const GOLDEN = 0.6180339887498949;
  let raf = null;

  function grid(density, aspect) {
    const across = Math.round(16 + 112 * density);
    return [across, Math.max(1, Math.round(across * aspect))];
  }

  function stop() {
    if (raf !== null) cancelAnimationFrame(raf);
    raf = null;
  }

  function play(canvas, url, density, drift, speed) {
    stop();
    if (!canvas || !url) return;
    const img = new Image();
    img.onload = () => {
      const width = Math.max(64, Math.min(canvas.parentElement.clientWidth || 512, 768));
      const aspect = img.height / img.width;
      canvas.width = width;
      canvas.height = Math.round(width * aspect);
      const [across, down] = grid(density, aspect);
      const sample = document.createElement("canvas");
      sample.width = across;
      sample.height = down;
      const sctx = sample.getContext("2d");
      sctx.imageSmoothingQuality = "high";
      sctx.drawImage(img, 0, 0, across, down);
      const px = sctx.getImageData(0, 0, across, down).data;
      const colours = [];
      for (let k = 0; k < across * down; k++) colours.push(`rgb(${px[4 * k]},${px[4 * k + 1]},${px[4 * k + 2]})`);
      const ctx = canvas.getContext("2d");
      const dot = Math.max(1, Math.round(0.9 * canvas.width / across));
      const amp = 0.08 * drift;
      const t0 = performance.now();
      const frame = (now) => {
        const wt = 2 * Math.PI * speed * ((now - t0) / 1000) / PERIOD_S;
        ctx.fillStyle = "#000";
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        for (let j = 0; j < down; j++) {
          const v = (j + 0.5) / down;
          for (let i = 0; i < across; i++) {
            const k = j * across + i;
            const u = (i + 0.5) / across;
            const phase = ((k * GOLDEN) % 1) * 2 * Math.PI;
            const x = u + amp * Math.sin(4 * Math.PI * v + wt + phase);
            const y = v + amp * Math.cos(4 * Math.PI * u + wt + phase);
            ctx.fillStyle = colours[k];
            ctx.fillRect(Math.round(x * canvas.width - dot / 2), Math.round(y * canvas.height - dot / 2), dot, dot);
          }
        }
        raf = requestAnimationFrame(frame);
      };
      raf = requestAnimationFrame(frame);
    };
    img.src = url;
  }

  window.dreamyParticles = { play, stop, grid };
})();
