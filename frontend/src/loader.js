// Cornerstone image loader for the app's stored slices: "ildnpy:<slice id>" fetches
// /api/files/slices/<id>.npy (int16 Hounsfield units, or uint8 for already-windowed 2-D
// reference images; the same visibility rule as the pages) and builds an IImage from it.
// No codecs, no web workers: the array is the image. A metadata provider answers the
// modules Cornerstone asks for from what the page's config says about each series.
import { imageLoader, metaData } from "@cornerstonejs/core";

const SCHEME = "ildnpy";
const meta = new Map(); // imageId -> { series, index, spacing, rows, cols }
const pixels = new Map(); // imageId -> { data, rows, cols, hu }

export function imageIdFor(sliceId) {
  return SCHEME + ":" + sliceId;
}

// Parses a NumPy .npy (format 1.0-3.0; little-endian int16/uint8/float32, C order).
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.slice(1, 6)) !== "NUMPY") {
    throw new Error("not a .npy file");
  }
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.slice(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1]
    .split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (fortran) throw new Error("Fortran-ordered arrays are not supported");
  const offset = start + headerLen;
  const body = buffer.slice(offset);
  let data;
  if (descr === "<i2" || descr === "i2") data = new Int16Array(body);
  else if (descr === "|u1" || descr === "u1") data = new Uint8Array(body);
  else if (descr === "<f4") data = new Float32Array(body);
  else if (descr === "<u2") data = new Uint16Array(body);
  else throw new Error("unsupported dtype " + descr);
  return { data, shape, descr };
}

function minMax(data) {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

function dataTypeOf(data) {
  return data.constructor.name;
}

function loadImage(imageId, urlTemplate) {
  const sliceId = imageId.slice(SCHEME.length + 1);
  const url = urlTemplate.replace("{pk}", sliceId);
  const promise = fetch(url, { credentials: "same-origin" })
    .then((r) => {
      if (!r.ok) throw new Error("slice " + sliceId + ": HTTP " + r.status);
      return r.arrayBuffer();
    })
    .then((buffer) => {
      const { data, shape } = parseNpy(buffer);
      const [rows, cols] = shape;
      const info = meta.get(imageId) || {};
      const hu = !(data instanceof Uint8Array);
      pixels.set(imageId, { data, rows, cols, hu });
      info.rows = rows;
      info.cols = cols;
      info.hu = hu;
      meta.set(imageId, info);
      const [lo, hi] = minMax(data);
      const spacing = info.spacing || [1, 1];
      return {
        imageId,
        minPixelValue: lo,
        maxPixelValue: hi,
        slope: 1,
        intercept: 0,
        windowCenter: hu ? -600 : 128,
        windowWidth: hu ? 1500 : 256,
        voiLUTFunction: "LINEAR",
        getPixelData: () => data,
        getCanvas: undefined,
        rows,
        columns: cols,
        height: rows,
        width: cols,
        color: false,
        rgba: false,
        numberOfComponents: 1,
        columnPixelSpacing: spacing[1],
        rowPixelSpacing: spacing[0],
        invert: false,
        sizeInBytes: data.byteLength,
        dataType: dataTypeOf(data),
      };
    });
  return { promise };
}

// The HU value (or grey value) at image pixel (col, row) of a loaded slice, else null.
export function pixelAt(imageId, col, row) {
  const p = pixels.get(imageId);
  if (!p || col < 0 || row < 0 || col >= p.cols || row >= p.rows) return null;
  return { value: p.data[row * p.cols + col], hu: p.hu };
}

export function pixelsOf(imageId) {
  return pixels.get(imageId) || null;
}

// Describes the slices of one series so the metadata provider can answer for them.
export function describeSeries(series) {
  series.slices.forEach((sliceId, index) => {
    const imageId = imageIdFor(sliceId);
    meta.set(imageId, {
      ...(meta.get(imageId) || {}),
      series: series.id,
      index,
      spacing: series.spacing,
      thickness: series.thickness || 1,
    });
  });
}

function provider(type, imageId) {
  if (typeof imageId !== "string" || !imageId.startsWith(SCHEME + ":")) return undefined;
  const info = meta.get(imageId);
  if (!info) return undefined;
  const hu = info.hu !== false;
  switch (type) {
    case "generalSeriesModule":
      return { modality: hu ? "CT" : "OT", seriesInstanceUID: "ild-series-" + info.series };
    case "imagePixelModule":
      return {
        samplesPerPixel: 1,
        photometricInterpretation: "MONOCHROME2",
        rows: info.rows,
        columns: info.cols,
        bitsAllocated: hu ? 16 : 8,
        bitsStored: hu ? 16 : 8,
        highBit: hu ? 15 : 7,
        pixelRepresentation: hu ? 1 : 0,
      };
    case "imagePlaneModule": {
      const [rowSpacing, colSpacing] = info.spacing || [1, 1];
      const z = info.index * (info.thickness || 1);
      return {
        frameOfReferenceUID: "ild-for-" + info.series,
        rows: info.rows,
        columns: info.cols,
        imageOrientationPatient: [1, 0, 0, 0, 1, 0],
        rowCosines: [1, 0, 0],
        columnCosines: [0, 1, 0],
        imagePositionPatient: [0, 0, z],
        sliceThickness: info.thickness || 1,
        sliceLocation: z,
        pixelSpacing: [rowSpacing, colSpacing],
        rowPixelSpacing: rowSpacing,
        columnPixelSpacing: colSpacing,
      };
    }
    case "voiLutModule":
      return hu ? { windowCenter: [-600], windowWidth: [1500] } : { windowCenter: [128], windowWidth: [256] };
    case "modalityLutModule":
      return { rescaleSlope: 1, rescaleIntercept: 0 };
    default:
      return undefined;
  }
}

export function registerLoader(urlTemplate) {
  imageLoader.registerImageLoader(SCHEME, (imageId) => loadImage(imageId, urlTemplate));
  metaData.addProvider(provider, 10000);
}
