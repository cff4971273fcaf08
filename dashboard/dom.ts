/** DOM helpers. Data reaches the page only as text (textContent, attributes), never as HTML. */

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
