/**
 * `work`'s value, or `late` once `ms` have passed without one; the timer is cleared either way.
 * `work` is left to end by itself: a caller whose work may reject after the deadline observes it.
 */
export async function orLate<T, L> (work: Promise<T>, ms: number, late: L): Promise<T | L> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<L>((resolve) => { timer = setTimeout(() => { resolve(late) }, ms) })
  try {
    return await Promise.race([work, deadline])
  } finally {
    clearTimeout(timer)
  }
}
