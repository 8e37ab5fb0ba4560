// Lung outline of one slice, drawn over the image when the outline toggle is on: air-dark
// pixels (below -400 HU; below grey 80 for already-windowed images) that are not connected to
// the image border (the air around the body) and form a region of at least MIN_SHARE of the
// image; the outline is the edge of that region. The same idea as the pipeline's segmentation
// (dark, inside the body), computed here from the pixels the viewer already holds.
const MIN_SHARE = 0.002;

export function lungRegion(data, rows, cols, hu) {
  const n = rows * cols;
  const limit = hu ? -400 : 80;
  const dark = new Uint8Array(n);
  for (let i = 0; i < n; i++) dark[i] = data[i] < limit ? 1 : 0;
  // 2: outside air (dark and connected to the border), 3+: candidate lung components.
  const stack = new Int32Array(n);
  function fill(seed, label) {
    let top = 0;
    let size = 0;
    stack[top++] = seed;
    dark[seed] = label;
    while (top) {
      const i = stack[--top];
      size++;
      const r = (i / cols) | 0;
      const c = i - r * cols;
      if (c > 0 && dark[i - 1] === 1) { dark[i - 1] = label; stack[top++] = i - 1; }
      if (c < cols - 1 && dark[i + 1] === 1) { dark[i + 1] = label; stack[top++] = i + 1; }
      if (r > 0 && dark[i - cols] === 1) { dark[i - cols] = label; stack[top++] = i - cols; }
      if (r < rows - 1 && dark[i + cols] === 1) { dark[i + cols] = label; stack[top++] = i + cols; }
    }
    return size;
  }
  for (let c = 0; c < cols; c++) {
    if (dark[c] === 1) fill(c, 2);
    const b = (rows - 1) * cols + c;
    if (dark[b] === 1) fill(b, 2);
  }
  for (let r = 0; r < rows; r++) {
    if (dark[r * cols] === 1) fill(r * cols, 2);
    const e = r * cols + cols - 1;
    if (dark[e] === 1) fill(e, 2);
  }
  const sizes = [0, 0, 0];
  let label = 3;
  for (let i = 0; i < n && label < 250; i++) {
    if (dark[i] === 1) { sizes[label] = fill(i, label); label++; }
  }
  const region = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const l = dark[i];
    if (l >= 3 && sizes[l] >= MIN_SHARE * n) region[i] = 1;
  }
  return region;
}

// Draws the edge of `region` into a canvas of the image's size (transparent elsewhere).
export function drawOutline(canvas, region, rows, cols) {
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  const px = img.data;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      if (!region[i]) continue;
      const edge = c === 0 || c === cols - 1 || r === 0 || r === rows - 1 ||
        !region[i - 1] || !region[i + 1] || !region[i - cols] || !region[i + cols];
      if (edge) {
        const o = 4 * i;
        px[o] = 0; px[o + 1] = 230; px[o + 2] = 255; px[o + 3] = 255;
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}
