import type { TaskType } from '../schemas/session.js'
import { InvalidInstructionsError } from './errors.js'

const LIST_ITEM = /^\s*(?:\d{1,4}[.)]|[-*•])\s+(.*)$/u
const TASK_MARKER = /\btask\s+\d{1,4}\s*[:.)-]\s*/giu
const STARTS_WITH_FIRST = /^\s*first(?:ly)?\b[,:]?\s*/iu
const SEQUENCE_MARKER = /(?:^|[\s,;.])(?:and\s+)?(?:then|next|after\s+that|afterwards|finally|lastly)\b[,:]?\s*/iu
const TRAILING_JOINER = /(?:[\s,;]+(?:and)?)+$/iu

/**
 * Splits free-text instructions into ordered task instructions.
 * Recognised shapes, tried in this order: numbered or bulleted lists (one item per line,
 * indented lines continue the item above), "Task 1: ... Task 2: ..." markers, and
 * "first, ... then ... finally ..." sequences. Anything else is one task.
 */
export function parseInstructions (text: string): string[] {
  const items = listItems(text) ?? taskMarkerItems(text) ?? sequenceItems(text) ?? [text.trim()]
  const tasks = items.map((item) => item.trim()).filter((item) => item.length > 0)
  if (tasks.length === 0) throw new InvalidInstructionsError('instructions must contain at least one non-blank task')
  return tasks
}

function listItems (text: string): string[] | undefined {
  const lines = text.split(/\r?\n/u)
  const items: string[] = []
  const preamble: string[] = []
  for (const line of lines) {
    const match = LIST_ITEM.exec(line)
    if (match) items.push(match[1] ?? '')
    else if (items.length === 0) preamble.push(line)
    else if (line.trim() !== '') items[items.length - 1] += '\n' + line.trim()
  }
  if (items.length === 0) return undefined
  // A lead-in such as "Steps:" introduces the list; any other lead-in is a task of its own.
  const lead = preamble.join('\n').trim()
  if (lead !== '' && !lead.endsWith(':')) items.unshift(lead)
  return items
}

function taskMarkerItems (text: string): string[] | undefined {
  const parts = text.split(TASK_MARKER)
  if (parts.length < 2) return undefined
  const lead = (parts.shift() ?? '').trim()
  if (lead !== '' && !lead.endsWith(':')) parts.unshift(lead)
  return parts
}

function sequenceItems (text: string): string[] | undefined {
  const first = STARTS_WITH_FIRST.exec(text)
  if (!first) return undefined
  const rest = text.slice(first[0].length)
  const parts = rest.split(new RegExp(SEQUENCE_MARKER.source, 'giu'))
  if (parts.length < 2) return undefined
  return parts.map((part) => part.replace(TRAILING_JOINER, '').replace(/[.;]\s*$/u, ''))
}

// Checked in this order; the first family with a match decides the type.
const TYPE_KEYWORDS: ReadonlyArray<readonly [TaskType, RegExp]> = [
  ['Coding', /\b(?:write\s+(?:some\s+|the\s+|a\s+)?code|code|coding|implement(?:s|ed|ing|ation)?|functions?|class(?:es)?|fix(?:es|ing)?\s+(?:a\s+|the\s+)?bugs?|debug(?:s|ged|ging)?|refactor(?:s|ed|ing)?)\b/iu],
  ['Analysis', /\b(?:analy[sz](?:e|es|ed|ing|is)|explain(?:s|ed|ing)?|what\s+is|describ(?:e|es|ed|ing))\b/iu],
  ['Research', /\b(?:research(?:es|ed|ing)?|find(?:s|ing)?|look\s+up|search(?:es|ed|ing)?)\b/iu],
  ['Reasoning', /\b(?:think(?:s|ing)?|reason(?:s|ing)?|solv(?:e|es|ed|ing)|plan(?:s|ned|ning)?)\b/iu]
]

/** The seed's keyword routing, case-insensitive; General when nothing matches. */
export function classifyTask (instruction: string): TaskType {
  for (const [type, pattern] of TYPE_KEYWORDS) {
    if (pattern.test(instruction)) return type
  }
  return 'General'
}
