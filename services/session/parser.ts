import type { TaskType } from '../../schemas/session.js'
import { InvalidInstructionsError } from '../errors.js'

// Linear on any input: no nested quantifiers, and `.` with the s flag never backtracks.
// A number needs no space after its `.` or `)` ("1.Research"), unless a digit follows ("1.5 million" is prose);
// a bullet needs one ("-5 degrees" is prose). A no-break space (pasted from a word processor) counts as one.
const LIST_ITEM = /^[ \t\u00a0]*(?:\d{1,9}[.)](?!\d)[ \t\u00a0]*|[-*•][ \t\u00a0]+)(.*)$/su
/** A line that starts with a date as Korean writes it ("2024. 1. 5."): no list item. */
const YEAR_DATE = /^[ \t\u00a0]*\d{4}\.[ \t\u00a0]*\d{1,2}\.[ \t\u00a0]*\d{1,2}\./u
/** A fence line's run and what follows it (Markdown's ``` or ~~~). Greedy run, then `.*`: no backtracking. */
const FENCE = /^[ \t\u00a0]*(`{3,}|~{3,})(.*)$/u

/** The text of the list item `line` is, or null. */
function itemOf (line: string): string | null {
  // No regex for a blank line: most lines of a hostile body are.
  if (line.length === 0) return null
  if (YEAR_DATE.test(line)) return null
  return LIST_ITEM.exec(line)?.[1] ?? null
}

/** A fence in `text` as CommonMark reads one: no backtick after a backtick run (```npm test``` is inline code). */
function fenceOf (text: string): { run: string, rest: string } | null {
  if (text.length < 3) return null
  const match = FENCE.exec(text)
  if (match === null) return null
  const run = match[1] as string
  const rest = match[2] ?? ''
  return run[0] === '`' && rest.includes('`') ? null : { run, rest }
}

/**
 * The lines that open or close a fenced code block, in pairs: a block is one only once it
 * closes (by the same character, as long or longer, nothing after it), so a stray ``` or a ~~~
 * separator never swallows the rest. A list item's text may open one ("- ```bash").
 */
function fenceLines (lines: readonly string[]): Set<number> {
  const paired = new Set<number>()
  // Built at the first opener: text without one never pays for it.
  let closers: Array<[number, number]> | null = null
  let open: { at: number, run: string } | null = null
  lines.forEach((line, at) => {
    if (open === null) {
      const opening = fenceOf(line) ?? fenceOf(itemOf(line) ?? '')
      if (opening === null) return
      closers ??= longestClosers(lines)
      // One never closed is plain text, and must not keep a later block from pairing.
      if ((closers[at + 1]?.[opening.run[0] === '`' ? 0 : 1] ?? 0) >= opening.run.length) open = { at, run: opening.run }
      return
    }
    const closing = closingRun(line)
    if (closing === null || closing[0] !== open.run[0] || closing.length < open.run.length) return
    paired.add(open.at).add(at)
    open = null
  })
  return paired
}
/** The run of a line that could close a fence (nothing after it), or null. */
function closingRun (line: string): string | null {
  const fence = fenceOf(line)
  return fence !== null && fence.rest.trim() === '' ? fence.run : null
}

/** For each line, the longest run of a line that could close a fence at it or after: [backticks, tildes]. One walk back. */
function longestClosers (lines: readonly string[]): Array<[number, number]> {
  const longest: Array<[number, number]> = Array.from({ length: lines.length + 1 }, (): [number, number] => [0, 0])
  for (let at = lines.length - 1; at >= 0; at--) {
    const [ticks, tildes] = longest[at + 1] as [number, number]
    const run = closingRun(lines[at] as string)
    const length = run?.length ?? 0
    longest[at] = run?.[0] === '`' ? [Math.max(ticks, length), tildes] : [ticks, Math.max(tildes, length)]
  }
  return longest
}

/** Line ends: CRLF, LF, and a lone CR (old Mac text). */
const LINE_END = /\r\n|[\n\r]/u
// No digit right after a `.` or `-`: "task 1.5" and "task 3-4" are prose ("Task 1:5 min warmup" is a marker).
const TASK_MARKER = /\btask\s+\d{1,9}\s*(?:[:)]|[.-](?!\d))\s*/giu
// "First of all" / "First off" are the marker whole; "First-time" or "First's" are words, not a marker.
const STARTS_WITH_FIRST = /^\s*(?:first\s+of\s+all|first\s+off|first(?:ly)?)(?![\p{L}\p{N}_'\u2019-])[,:;.\u2013\u2014]?\s*/iu
// "next" only counts after punctuation, so "read the next chapter" stays whole.
const SEQUENCE_MARKER = /(?:(?:^|[\s,;.])(?:and\s+)?(?:then|after\s+that|afterwards|finally|lastly)|(?:^|[,;.])\s*(?:and\s+)?next(?![\p{L}\p{N}_'\u2019-])(?!\.\p{L}))\b[,:]?\s*/iu

/**
 * Splits free-text instructions into ordered task instructions.
 * Recognised shapes, tried in this order: numbered or bulleted lists (one item per line;
 * other non-blank lines, and items nested under one, continue the item above), two or more "Task 1: ... Task 2: ..."
 * markers, and "first, ... then ... finally ..." sequences. Anything else is one task.
 * Nothing the client wrote is dropped except a lead-in heading such as "Steps:".
 */
export function parseInstructions (given: string): string[] {
  // A byte-order mark (text pasted from a file saved as UTF-8 with BOM) is not part of the first item.
  const text = given.startsWith('\ufeff') ? given.slice(1) : given
  const items = listItems(text) ?? taskMarkerItems(text) ?? sequenceItems(text) ?? [text.trim()]
  const tasks = items.map((item) => item.trim()).filter((item) => !isBlank(item))
  if (tasks.length === 0) throw new InvalidInstructionsError('instructions must contain at least one non-blank task')
  return tasks
}

function listItems (text: string): string[] | undefined {
  const lines = text.split(LINE_END)
  const items: string[] = []
  const preamble: string[] = []
  // The first item's indent is the list's: an item indented further under one (by NESTED_INDENT
  // or more, as Markdown nests) is a detail of it, kept in its text with its marker.
  let base = 0
  // Where the current item's text starts: a code block under it loses that much indent, no more
  // (its own indent is the code's).
  let content = 0
  // Inside a fenced code block every line is the item's (or the lead's) as written: never an item.
  const fences = fenceLines(lines)
  let inside = false
  for (let at = 0; at < lines.length; at++) {
    const line = lines[at] as string
    const fenced = inside
    const fence = fences.has(at)
    if (fence) inside = !inside
    // An item's line may open a block ("- ```bash"); a line inside one is never an item.
    const item = fenced ? null : itemOf(line)
    if (item !== null && items.length === 0) base = indentOf(line)
    if (item !== null && (items.length === 0 || indentOf(line) < base + NESTED_INDENT)) {
      items.push(item)
      content = columnsOf(line.slice(0, line.length - item.length))
    } else if (items.length === 0) preamble.push(line)
    else if (fenced || fence) items[items.length - 1] += '\n' + dedent(line, content).trimEnd()
    else if (line.trim() !== '') items[items.length - 1] += '\n' + line.trim()
  }
  if (items.length === 0) return undefined
  return withLead(preamble.join('\n'), items)
}

/** The columns `text` takes: a tab four. */
function columnsOf (text: string): number {
  let columns = 0
  for (const char of text) columns += char === '\t' ? TAB_COLUMNS : 1
  return columns
}

/** `line` without up to `columns` of its indent. */
function dedent (line: string, columns: number): string {
  let at = 0
  for (let taken = 0; at < line.length && taken < columns; at++) {
    const char = line[at]
    if (char === '\t') taken += TAB_COLUMNS
    else if (char === ' ' || char === '\u00a0') taken++
    else break
  }
  return line.slice(at)
}

/** Where the text's fenced code blocks lie ([start, end) offsets): markers inside them split nothing. */
function fencedSpans (text: string): Array<[number, number]> {
  const lines: string[] = []
  const starts: number[] = []
  // Line ends as LINE_END reads them, found by a scan: a regex's matches over a million of them cost a third of a second.
  let from = 0
  for (let at = 0; at < text.length; at++) {
    const code = text.charCodeAt(at)
    if (code !== 0x0a && code !== 0x0d) continue
    lines.push(text.slice(from, at))
    starts.push(from)
    if (code === 0x0d && text.charCodeAt(at + 1) === 0x0a) at++
    from = at + 1
  }
  lines.push(text.slice(from))
  starts.push(from)
  const spans: Array<[number, number]> = []
  let open: number | null = null
  for (const at of [...fenceLines(lines)].sort((a, b) => a - b)) {
    if (open === null) open = starts[at] as number
    else {
      spans.push([open, (starts[at] as number) + (lines[at] as string).length])
      open = null
    }
  }
  return spans
}

/** Whether `at` lies in one of `spans` (in order), walking `cursor` on: markers come in order too, so one walk in all. */
function inSpans (spans: ReadonlyArray<[number, number]>, cursor: { span: number }, at: number): boolean {
  while (cursor.span < spans.length && (spans[cursor.span] as [number, number])[1] <= at) cursor.span++
  return cursor.span < spans.length && at >= (spans[cursor.span] as [number, number])[0]
}

/** Columns of indent that make a list item a sub-item of the one above (`- x` then `  - y`). */
const NESTED_INDENT = 2
const TAB_COLUMNS = 4

/** A line's indent in columns: a tab counts as four. */
function indentOf (line: string): number {
  let columns = 0
  for (const char of line) {
    if (char === '\t') columns += TAB_COLUMNS
    else if (char === ' ' || char === '\u00a0') columns++
    else break
  }
  return columns
}

/** A "Task N:" marker: where it starts and ends, its number, and what it starts. */
interface TaskMarker { start: number, end: number, number: number, opens: Opening }

function taskMarkerItems (text: string): string[] | undefined {
  // Markers split where numbered in sequence, the first setting the start (lists may start at
  // any number), or where they start a line, as list items do: a task naming an earlier one
  // ("fix what task 1. found") keeps its words. One naming the next ("logs for task 2. Task 2:
  // ...") gives way to the next marker of that number that starts a line or sentence, when it did not.
  const markers: TaskMarker[] = []
  // Found once a marker is: text without one never pays for the walk over its lines.
  let fences: Array<[number, number]> | null = null
  const cursor = { span: 0 }
  for (const match of text.matchAll(TASK_MARKER)) {
    fences ??= fencedSpans(text)
    if (inSpans(fences, cursor, match.index)) continue
    const marker = { start: match.index, end: match.index + match[0].length, number: Number(/\d+/u.exec(match[0])?.[0]), opens: openingAt(text, match.index) }
    const last = markers.at(-1)
    if (last !== undefined && markers.length > 1 && marker.number === last.number && marker.opens !== 'none' && last.opens === 'none') markers[markers.length - 1] = marker
    else if (last === undefined || marker.number === last.number + 1 || marker.opens === 'line') markers.push(marker)
  }
  // One "task 3:" inside a sentence is prose, not a list; markers must also lead the text.
  const first = markers[0]
  if (first === undefined || markers.length < 2) return undefined
  const lead = text.slice(0, first.start)
  const items = markers.map((marker, i) => text.slice(marker.end, markers[i + 1]?.start ?? text.length))
  if (isBlank(lead) || isHeading(lead)) return items
  // An instruction introducing the markers ("Only use staging: Task 1: ...") is a task of its own,
  // as is text above markers that start a line or a sentence, the first a line, as above a list (a heading line right before them
  // dropped); other text before them makes them prose ("Be quick. Task 1: a Task 2: b").
  return lead.trim().endsWith(':') || (first.opens === 'line' && markers.every((marker) => marker.opens !== 'none')) ? withLead(lead, items) : undefined
}

type Opening = 'line' | 'sentence' | 'none'

/** What the text at `at` starts: a line, a sentence, or neither (blanks before it skipped back over). */
function openingAt (text: string, at: number): Opening {
  let i = at
  // Markers end with their blanks, so this walks back over the text since the last marker at most: linear in all.
  while (i > 0 && /[ \t\u00a0]/u.test(text[i - 1] ?? '')) i--
  if (i === 0 || /[\n\r]/u.test(text[i - 1] ?? '')) return 'line'
  return /[.!?;]/u.test(text[i - 1] ?? '') ? 'sentence' : 'none'
}

/**
 * A lead-in such as "Steps:" or "Please do the following:" introduces the items and is dropped;
 * one that asks for typed work itself ("Write a function that:") is kept as a task, so no
 * instruction is lost. Only the heading line itself goes: text above it ("Our database must
 * not go down.\nPlease do the following:") is kept as a task of its own.
 */
function withLead (lead: string, items: string[]): string[] {
  const lines = lead.split(LINE_END)
  while (lines.length > 0 && (lines.at(-1) as string).trim() === '') lines.pop()
  if (lines.length === 0) return items
  if (isHeading(lines.at(-1) as string)) lines.pop()
  const kept = lines.join('\n')
  return kept.trim() === '' ? items : [kept, ...items]
}

/**
 * A short heading that only names what follows: "Steps:", "Next steps:", "Implementation plan:",
 * "Please do the following:", "Here is what to do:". Anything else ending in ":" ("Translate these
 * into French:", a constraint) is an instruction, kept as a task. Bounded repeats: linear.
 */
const HEADING = new RegExp('^(?:' + [
  // A heading noun, after at most one qualifier that is no verb or pointer ("Next steps", "Implementation plan"), and
  // before a short qualifier ("for today", "to reproduce", "(in order)").
  '(?:(?:next|main|my|our|your|the|project|implementation|research|coding|design|testing|remaining|open|today\'s|daily|weekly|sprint|release)\\s+)?(?:steps?|tasks?|sub-?tasks|to-?dos?|to-?do\\s+list|to\\s+do|plan|instructions|checklist|action\\s+items|requirements|goals|objectives|agenda|notes|acceptance\\s+criteria|overview|summary|deliverables|milestones|things\\s+to\\s+do)(?:\\s+for\\s+(?:today|tomorrow|this\\s+week)|\\s+to\\s+reproduce|\\s*\\(in\\s+order\\)|,?\\s+in\\s+order)?',
  '(?:please\\s+)?(?:do|complete|follow)\\s+the\\s+following(?:,?\\s+in\\s+order)?',
  'here(?:\'s|\u2019s|\\s+is|\\s+are)\\s+(?:what\\s+(?:to|you\\s+should|i\\s+need\\s+you\\s+to)\\s+do|the\\s+(?:plan|steps|tasks|list))',
  '(?:two|three|four|five|a\\s+few|some)\\s+things'
].join('|') + ')\\s*:$', 'iu')

function isHeading (text: string): boolean {
  return HEADING.test(text.trim())
}

function sequenceItems (text: string): string[] | undefined {
  const first = STARTS_WITH_FIRST.exec(text)
  if (!first) return undefined
  const rest = text.slice(first[0].length)
  // Code is not prose: `.then(...)` in a pasted block is no joiner.
  let fences: Array<[number, number]> | null = null
  const cursor = { span: 0 }
  const parts: string[] = []
  let from = 0
  // Where the last marker, split on or not, ended: a condition is judged in the text since (linear).
  let since = 0
  for (const match of rest.matchAll(new RegExp(SEQUENCE_MARKER.source, 'giu'))) {
    fences ??= fencedSpans(rest)
    if (inSpans(fences, cursor, match.index)) continue
    const joined = joins(rest, Math.max(from, since), match.index, match[0])
    since = match.index + match[0].length
    if (!joined) continue
    parts.push(rest.slice(from, match.index))
    from = since
  }
  if (parts.length === 0) return undefined
  parts.push(rest.slice(from))
  return parts.map((part) => stripTrailingJoiners(stripLeadingMarkers(part)))
}

/**
 * Whether a marker found at `at` joins two tasks. Not a method (`.then chains`, `then(`), nor
 * the "then" of a condition ("if they fail then revert": its clause, since `from` and the last
 * punctuation, opens with if, when, unless or once), which stays in its task.
 */
function joins (text: string, from: number, at: number, marker: string): boolean {
  if (/^\.then/u.test(marker) || /then\($/iu.test(marker + (text[at + marker.length] ?? ''))) return false
  // After a full stop a new sentence starts: no condition runs on into it.
  if (!/\bthen\b/iu.test(marker) || marker.startsWith('.')) return true
  // The clause the marker ends: back over the punctuation right before it ("if it fails, then").
  let stop = at
  while (stop > from && /[\s,;]/u.test(text[stop - 1] ?? '')) stop--
  const clause = (text.slice(from, stop).split(/[,;.\n\r]/u).at(-1) ?? '').trimStart()
  // Opening it, or after a conjunction ("run the tests and if they fail then revert"); not "check if ..., then".
  return !/(?:^|\b(?:and|or|but)\s+)(?:if|when|whenever|unless|once)\b/iu.test(clause)
}

/** A marker at the very start of a part (sticky: never scans past it). */
const LEADING_MARKER = new RegExp(SEQUENCE_MARKER.source, 'iuy')

/**
 * Drops markers right after the one split on ("then, finally, write" → "write"): the split took
 * the space the next one needs. A marker word must end at a space, comma, colon or the end
 * ("then next.js config" keeps its words); "next" followed by a space is a word of the task
 * ("then next steps doc"), not a marker, unless a comma or colon ends it.
 */
function stripLeadingMarkers (part: string): string {
  for (;;) {
    LEADING_MARKER.lastIndex = 0
    const marker = LEADING_MARKER.exec(part)
    if (marker === null) return part
    const text = marker[0]
    const ended = /[,:]\s*$/u.test(text) || text.length === part.length
    if (!ended && !(/\s$/u.test(text) && !/next\s*$/iu.test(text))) return part
    part = part.slice(marker[0].length)
  }
}

/** Drops trailing separators and a dangling "and" ("research X, and" → "research X"). A loop, not a regex: linear on any input. */
function stripTrailingJoiners (part: string): string {
  let end = part.length
  let stop = false
  for (;;) {
    while (end > 0 && /[\s,;]/u.test(part[end - 1] ?? '')) end--
    // One full stop ending a sentence goes; a dot that is part of the task stays (`git add .`, `cd ..`).
    if (!stop && end > 1 && part[end - 1] === '.' && !/[\s.]/u.test(part[end - 2] ?? '')) {
      end--
      stop = true
      continue
    }
    if (end >= 3 && part.slice(end - 3, end).toLowerCase() === 'and' && (end === 3 || /\s/u.test(part[end - 4] ?? ''))) end -= 3
    else return part.slice(0, end)
  }
}

// Checked in this order; the first family with a match decides the type. A keyword is a word of
// its own: `\b` knows ASCII letters only, so an accented letter before one ("décode") would end a
// word. Only Latin letters (with their combining marks), digits and `_` join one: an English
// keyword written against Chinese, Japanese, Thai or Hindi text, which puts no space there, still
// counts (the marks ending a Thai or Devanagari syllable are no Latin letter's).
const WORD_START = String.raw`(?<![\p{Script=Latin}\p{N}_]\p{M}*)`
const WORD_END = String.raw`(?![\p{Script=Latin}\p{M}\p{N}_])`
const keywords = (words: string): RegExp => new RegExp(`${WORD_START}(?:${words})${WORD_END}`, 'iu')
const TYPE_KEYWORDS: ReadonlyArray<readonly [TaskType, RegExp]> = [
  ['Coding', keywords(String.raw`write\s+(?:some\s+|the\s+|a\s+)?code|code|coding|implement(?:s|ed|ing|ations?)?|functions?|class(?:es)?|fix(?:es|ed|ing)?\s+(?:(?:a|an|the|this|that|these|those|all(?:\s+the)?|my|our|your)\s+)?(?:[\p{L}-]+\s+)?bugs?|bugfix(?:es)?|debug(?:s|ged|ging)?|refactor(?:s|ed|ing)?`)],
  ['Analysis', keywords(String.raw`analy[sz](?:e|es|ed|ing|is)|explain(?:s|ed|ing)?|explanations?|what\s+is|describ(?:e|es|ed|ing)|descriptions?`)],
  // Before Research's "search": writing one is code (the design document's example), explaining one is not.
  ['Coding', keywords(String.raw`write\s+(?:a\s+|an\s+|the\s+)?(?:binary|linear)\s+search`)],
  ['Research', keywords(String.raw`research(?:es|ed|ing)?|find(?:s|ing)?|look(?:s|ed|ing)?\s+up|search(?:es|ed|ing)?`)],
  ['Reasoning', keywords(String.raw`think(?:s|ing)?|reason(?:s|ed|ing)?|solv(?:e|es|ed|ing)|plan(?:s|ned|ning)?`)]
]

/**
 * Whether `text` shows nothing: white space and invisible format characters (zero-width space
 * and joiners, word joiner, soft hyphen, BOM) only, which `trim()` leaves.
 */
export function isBlank (text: string): boolean {
  return BLANK.test(text)
}

// Format characters but the few that draw a mark of their own (Arabic number signs, the Syriac abbreviation mark).
const BLANK = /^(?:(?![\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u{110bd}\u{110cd}])[\p{White_Space}\p{Cf}])*$/u

/** The seed's keyword routing, case-insensitive; General when nothing matches. */
export function classifyTask (instruction: string): TaskType {
  for (const [type, pattern] of TYPE_KEYWORDS) {
    if (pattern.test(instruction)) return type
  }
  return 'General'
}
