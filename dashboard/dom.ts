/**
 * DOM helpers. Data reaches the page only as text (textContent, attributes), never as HTML, and
 * live updates change nodes in place, so what the reader has open or focused stays so.
 */

export const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const element = document.getElementById(id)
  if (element === null) throw new Error(`#${id} missing`)
  return element as T
}

/** An element with text content and attributes: the only way data reaches the page. */
export function el<K extends keyof HTMLElementTagNameMap> (tag: K, attrs: Record<string, string> = {}, ...children: Array<Node | string>): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value)
  for (const child of children) node.append(typeof child === 'string' ? document.createTextNode(child) : child)
  return node
}

/** Sets a node's text only when it changed: an unchanged node is not redrawn or re-announced. */
export function setText (node: Node, text: string): void {
  if (node.textContent !== text) node.textContent = text
}

/**
 * Makes `wanted` (less its false entries: parts not shown now) the children of `parent`, in that
 * order, moving only the ones out of place and removing the rest: nodes kept keep their state
 * (an open details element, a half-typed field).
 */
export function arrange (parent: Element, wanted: Array<Element | false>): void {
  const nodes = wanted.filter((node) => node !== false)
  nodes.forEach((node, index) => {
    const there = parent.children[index] ?? null
    if (there !== node) parent.insertBefore(node, there)
  })
  while (parent.children.length > nodes.length) parent.lastElementChild?.remove()
}

/** Whether the keyboard can still be on `node`: in the page, not hidden, not disabled. */
function usable (node: HTMLElement): boolean {
  return node.isConnected && node.closest('[hidden]') === null && !(node instanceof HTMLButtonElement && node.disabled)
}

/**
 * Runs `draw`, which changes what is inside `scope`, and keeps the keyboard's place there. An
 * element that was only moved loses focus in the browser and gets it back; one removed, hidden
 * or disabled hands it to the nearest container that takes focus (tabindex="-1", a task's item),
 * or else to `fallback()`: never to nothing, where the next Tab starts from the top of the page.
 */
export function keepFocus (scope: HTMLElement, draw: () => void, fallback: () => HTMLElement): void {
  const had = document.activeElement
  if (!(had instanceof HTMLElement) || had === document.body || !scope.contains(had)) {
    draw()
    return
  }
  // Found before drawing: once `had` is detached, its ancestors are out of reach.
  const holder = had.parentElement?.closest<HTMLElement>('[tabindex="-1"]')
  draw()
  if (usable(had)) {
    if (document.activeElement !== had) had.focus({ preventScroll: true })
  } else {
    (holder !== null && holder !== undefined && usable(holder) ? holder : fallback()).focus()
  }
}
