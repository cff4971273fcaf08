// Stores with their saves observed; every other member passes through (whatever the interface grows).
import { now } from './stats.mjs'

/** `inner` with `save` replaced by `save`; other functions stay bound to `inner`. */
export function withSave (inner, save) {
  return new Proxy(inner, {
    get (target, key) {
      if (key === 'save') return save
      const value = Reflect.get(target, key, target)
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}

/** The store with its saves counted and timed, and the bytes they stored: { store, counter: { saves, saveMs, bytes } }. */
export function countingStore (inner) {
  const counter = { saves: 0, saveMs: 0, bytes: 0 }
  const store = withSave(inner, async (file) => {
    const t = now()
    try {
      const bytes = await inner.save(file)
      if (typeof bytes === 'number') counter.bytes += bytes
      return bytes
    } finally { counter.saves++; counter.saveMs += now() - t }
  })
  return { store, counter }
}
