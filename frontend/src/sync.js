// Linked scrolling by position within the lungs. Each series carries, per slice, its relative
// position between the first and the last lung slice (retrieval/selectors/viewer.py). Linking
// keeps the offset the two viewports had when they were linked (at the matched slice pair, so
// the pair stays aligned) and moves the other viewport to the slice nearest that position.
export function nearestIndex(positions, target) {
  let best = 0;
  let bestDist = Infinity;
  for (let i = 0; i < positions.length; i++) {
    const d = Math.abs(positions[i] - target);
    if (d < bestDist) { bestDist = d; best = i; }
  }
  return best;
}

export function linkedIndex(fromPositions, fromIndex, toPositions, offset) {
  return nearestIndex(toPositions, fromPositions[fromIndex] + offset);
}
