import t from 'tap'
import { classifyTask, parseInstructions } from '../services/session/parser.js'
import { InvalidInstructionsError, TaskvaultError } from '../services/errors.js'

t.test('parseInstructions: lists', async (t) => {
  t.test('numbered with "1." and "1)" (mixed in one list)', async (t) => {
    t.strictSame(parseInstructions('1. Write a function\n2) Explain it\n3. Test it'),
      ['Write a function', 'Explain it', 'Test it'])
    t.strictSame(parseInstructions('10) ten\n11) eleven'), ['ten', 'eleven'])
    t.strictSame(parseInstructions('9999. a\n10000. b\n123456789) c'), ['a', 'b', 'c'], 'long numbers are items, not continuations')
    t.strictSame(parseInstructions('Task 9999: a Task 10000: b'), ['a', 'b'])
  })

  t.test('bullets "-", "*" and "•", item text trimmed', async (t) => {
    t.strictSame(parseInstructions('- dash item\n* star item  \n•   dot item'), ['dash item', 'star item', 'dot item'])
    t.strictSame(parseInstructions('  1.   indented and padded   \n  2. b'), ['indented and padded', 'b'])
  })

  t.test('a line continuing an item is appended to it; blank lines between items are ignored', async (t) => {
    t.strictSame(parseInstructions('1. Write a parser\n   that handles quotes\n\n2. Document it'),
      ['Write a parser\nthat handles quotes', 'Document it'])
  })

  t.test('a lead-in ending with ":" only introduces the list', async (t) => {
    t.strictSame(parseInstructions('Please do the following:\n1. a\n2. b'), ['a', 'b'])
    t.strictSame(parseInstructions('Steps:\n\n- a\n- b'), ['a', 'b'])
  })

  t.test('a lead-in ending with ":" that asks for typed work is kept as a task', async (t) => {
    t.strictSame(parseInstructions('Write a function that:\n- takes x\n- returns y'), ['Write a function that:', 'takes x', 'returns y'])
  })

  t.test('a lead-in without ":" is a task of its own, first', async (t) => {
    t.strictSame(parseInstructions('Set up the repo\n1. Write code\n2. Explain it'), ['Set up the repo', 'Write code', 'Explain it'])
  })

  t.test('marker-like text that is not a list item stays one task', async (t) => {
    t.strictSame(parseInstructions('1.5 million users signed up'), ['1.5 million users signed up'])
    t.strictSame(parseInstructions('-5 degrees outside'), ['-5 degrees outside'])
    t.strictSame(parseInstructions('**bold** statement'), ['**bold** statement'])
  })

  t.test('empty items are dropped', async (t) => {
    t.strictSame(parseInstructions('- \n- b\n1. \n'), ['b'])
  })
})

t.test('parseInstructions: lists as people type or paste them', async (t) => {
  t.strictSame(parseInstructions('1.Research\n2.Design\n3.Implement'), ['Research', 'Design', 'Implement'], 'no space after the number')
  t.strictSame(parseInstructions('1)Research\n2)Design'), ['Research', 'Design'])
  t.strictSame(parseInstructions('1.\u00a0Research\n2.\u00a0Design'), ['Research', 'Design'], 'a no-break space pasted from a word processor')
  t.strictSame(parseInstructions('\u00a0- Research\n\u00a0- Design'), ['Research', 'Design'])
  t.strictSame(parseInstructions('1. Research\r2. Design\r3. Implement'), ['Research', 'Design', 'Implement'], 'lone CR line ends')
  t.strictSame(parseInstructions('It costs 1.5 million\nand takes 2.5 weeks'), ['It costs 1.5 million\nand takes 2.5 weeks'], 'a decimal number is not a list item')
  t.strictSame(parseInstructions('-5 degrees tonight\n-3 tomorrow'), ['-5 degrees tonight\n-3 tomorrow'], 'a bullet still needs its space')
})

t.test('parseInstructions: items indented under an item are its details, not tasks of their own', async (t) => {
  t.strictSame(parseInstructions('1. Research\n   - read the papers\n   - summarize them\n2. Design\n3. Implement'),
    ['Research\n- read the papers\n- summarize them', 'Design', 'Implement'], 'bullets under a numbered item')
  t.strictSame(parseInstructions('- Research\n  - sub one\n    - deeper\n- Design'), ['Research\n- sub one\n- deeper', 'Design'], 'bullets under bullets, at any depth')
  t.strictSame(parseInstructions('1. Research\n\t1. inner one\n\t2. inner two\n2. Design'), ['Research\n1. inner one\n2. inner two', 'Design'], 'a tab indents too')
  t.strictSame(parseInstructions('  1. Research\n  2. Design'), ['Research', 'Design'], 'a list indented as a whole is still a list')
  t.strictSame(parseInstructions('1. Research\n 2. Design'), ['Research', 'Design'], 'one stray space does not nest')
  t.strictSame(parseInstructions('Steps:\n   1. Research\n   2. Design\n1. Deploy'), ['Research', 'Design', 'Deploy'], 'an item less indented than the first is one of the list')
})

t.test('parseInstructions: only the heading line of a lead-in goes; what is written above it stays', async (t) => {
  t.strictSame(parseInstructions('Our prod DB is Postgres 12 and must not go down.\nPlease do the following:\n1. Back up\n2. Upgrade'),
    ['Our prod DB is Postgres 12 and must not go down.', 'Back up', 'Upgrade'])
  t.strictSame(parseInstructions('Context: prod is on v2.\nSteps:\n1. a\n2. b'), ['Context: prod is on v2.', 'a', 'b'])
  t.strictSame(parseInstructions('Steps:\n1. a\n2. b'), ['a', 'b'], 'a heading alone still goes')
  t.strictSame(parseInstructions('Please do the following:\n\n1. a\n2. b'), ['a', 'b'], 'blank lines after it too')
})

t.test('parseInstructions: "Task N:" markers', async (t) => {
  t.test('inline on one line', async (t) => {
    t.strictSame(parseInstructions('Task 1: write code Task 2: explain it'), ['write code', 'explain it'])
  })

  t.test('across lines, with the other separators and any case', async (t) => {
    t.strictSame(parseInstructions('Task 1: research X\ntask 2) analyze Y\nTASK 3 - plan Z\nTask 4. done'),
      ['research X', 'analyze Y', 'plan Z', 'done'])
  })

  t.test('a heading ending with ":" is dropped; other text before the markers makes it prose', async (t) => {
    t.strictSame(parseInstructions('Two things: Task 1: a Task 2: b'), ['a', 'b'])
    t.strictSame(parseInstructions('Be quick. Task 1: a Task 2: b'), ['Be quick. Task 1: a Task 2: b'], 'markers must lead the text')
  })

  t.test('"task" inside another word is not a marker', async (t) => {
    t.strictSame(parseInstructions('Finish subtask 1: it is late'), ['Finish subtask 1: it is late'])
  })

  t.test('a single mention of "task N:" inside a sentence is not a marker', async (t) => {
    t.strictSame(parseInstructions('Review task 1: the login flow'), ['Review task 1: the login flow'])
    t.strictSame(parseInstructions('Please finish task 3. Also document it.'), ['Please finish task 3. Also document it.'])
  })

  t.test('only markers numbered in sequence split: a task may name an earlier one', async (t) => {
    t.strictSame(parseInstructions('Task 1: Read the logs. Task 2: Fix the bug found in task 1. Task 3: Deploy the fix'),
      ['Read the logs.', 'Fix the bug found in task 1.', 'Deploy the fix'])
    t.strictSame(parseInstructions('Task 1: Build it Task 2: Ship it (see task 1)'), ['Build it', 'Ship it (see task 1)'])
    t.strictSame(parseInstructions('Task 4: a Task 5: b'), ['a', 'b'], 'the first marker sets the start')
    t.strictSame(parseInstructions('Task 1: Collect the logs needed for task 2. Task 2: Analyze them'), ['Collect the logs needed for task 2.', 'Analyze them'],
      'a task naming the next: the marker that starts a sentence splits')
    t.strictSame(parseInstructions('Task 1: Build it Task 2: Ship it (see task 2)'), ['Build it', 'Ship it (see task 2)'])
    t.strictSame(parseInstructions('Task 1: plan\nTask 2: design the schema\nTask 2: implement it\nTask 4: test it'), ['plan', 'design the schema', 'implement it', 'test it'],
      'a marker starting a line splits whatever its number, as a list item does')
  })
})

t.test('parseInstructions: "first ... then ... finally" sequences', async (t) => {
  t.test('commas, "and then", "finally" and trailing punctuation', async (t) => {
    t.strictSame(parseInstructions('First, research X, then analyze Y, and finally write code.'),
      ['research X', 'analyze Y', 'write code'])
  })

  t.test('without punctuation, and with the other joiners', async (t) => {
    t.strictSame(parseInstructions('first research X then analyze Y finally write code'), ['research X', 'analyze Y', 'write code'])
    t.strictSame(parseInstructions('First research X, then, finally, write code'), ['research X', 'write code'], 'adjacent markers are one joint')
    t.strictSame(parseInstructions('First a; and then, after that, b. Lastly: c'), ['a', 'b', 'c'])
    // Only a marker a comma or colon ends is dropped after another: these are words of the task.
    t.strictSame(parseInstructions('First install deps, then next.js config'), ['install deps', 'next.js config'])
    t.strictSame(parseInstructions('First a, then next-gen tests'), ['a', 'next-gen tests'])
    t.strictSame(parseInstructions('First a, then Next steps doc'), ['a', 'Next steps doc'])
    t.strictSame(parseInstructions('First a, then lastly'), ['a'], 'a marker with nothing after it is no task')
    t.strictSame(parseInstructions('First do A and then finally do B'), ['do A', 'do B'])
    t.strictSame(parseInstructions('First a, then lastly b'), ['a', 'b'])
    t.strictSame(parseInstructions('First a, then after that b'), ['a', 'b'])
    t.strictSame(parseInstructions('First a then, finally b'), ['a', 'b'])
    t.strictSame(parseInstructions('Firstly: a; next b; after that c; lastly d.'), ['a', 'b', 'c', 'd'])
    t.strictSame(parseInstructions('First, analyze the data. Then summarize it.'), ['analyze the data', 'summarize it'])
  })

  t.test('"then" inside a word is not a joiner', async (t) => {
    t.strictSame(parseInstructions('First, fix authentication then deploy'), ['fix authentication', 'deploy'])
  })

  t.test('"First" without any joiner, or a joiner without "First", is one task', async (t) => {
    t.strictSame(parseInstructions('First, do the thing'), ['First, do the thing'])
    t.strictSame(parseInstructions('Do X and then Y'), ['Do X and then Y'])
    t.strictSame(parseInstructions('Firstborn children then'), ['Firstborn children then'])
  })

  t.test('"next" used as an ordinary word is not a joiner', async (t) => {
    t.strictSame(parseInstructions('First, read the next chapter, then summarize it'), ['read the next chapter', 'summarize it'])
    t.strictSame(parseInstructions('First, read the docs. Next.js is what we use, so build the app with it'),
      ['First, read the docs. Next.js is what we use, so build the app with it'], 'no word is lost')
  })

  t.test('"First of all" and "First off" are the marker whole; "First-time" is a word', async (t) => {
    t.strictSame(parseInstructions('First of all, back up the database, then run the migration'), ['back up the database', 'run the migration'])
    t.strictSame(parseInstructions('First off, write code for login, then add tests'), ['write code for login', 'add tests'])
    t.strictSame(parseInstructions('First-time setup: install the dependencies, then run the tests'), ['First-time setup: install the dependencies, then run the tests'])
    t.strictSame(parseInstructions('First\u2014read the docs, then write code'), ['read the docs', 'write code'], 'a dash after "First"')
    t.strictSame(parseInstructions('First. Read the docs. Then write code.'), ['Read the docs', 'write code'])
    t.strictSame(parseInstructions('First install node, next... configure eslint, finally run the tests'), ['install node', '... configure eslint', 'run the tests'])
  })
})

t.test('parseInstructions: fallback, blank input, line endings', async (t) => {
  t.test('anything else is one trimmed task, inner newlines kept', async (t) => {
    t.strictSame(parseInstructions('  \n Write a poem about the sea \n\t'), ['Write a poem about the sea'])
    t.strictSame(parseInstructions('line one\nline two'), ['line one\nline two'])
  })

  t.test('blank or whitespace-only input throws InvalidInstructionsError', async (t) => {
    for (const text of ['', '   ', '\n\t\n', '\r\n\r\n', '- \n* ', 'first, then', 'First, then, finally', 'first then and then lastly']) {
      t.throws(() => parseInstructions(text), InvalidInstructionsError, JSON.stringify(text))
      t.throws(() => parseInstructions(text), { code: 'INVALID_INSTRUCTIONS' })
    }
    const err = t.throws(() => parseInstructions(''))
    t.type(err, TaskvaultError)
  })

  t.test('a byte-order mark before the text is not part of the first task', async (t) => {
    t.strictSame(parseInstructions('\ufeff1. A\n2. B'), ['A', 'B'])
  })

  t.test('Windows line endings leave no \\r in any task', async (t) => {
    t.strictSame(parseInstructions('Steps:\r\n1) a\r\n   more a\r\n2) b\r\n'), ['a\nmore a', 'b'])
    t.strictSame(parseInstructions('Task 1: a\r\nTask 2: b\r\n'), ['a', 'b'])
    t.strictSame(parseInstructions('First, a\r\nthen b\r\nfinally c\r\n'), ['a', 'b', 'c'])
  })
})

t.test('classifyTask', async (t) => {
  const families: Record<string, string[]> = {
    Coding: ['Write binary search', 'Write a linear search', 'Implement a linear search', 'Write code for a parser', 'Write some code', 'Implement a cache', 'implemented the API', 'Write a function to sort',
      'Create a class for users', 'Fix bug in login', 'Fix the bugs in login', 'debug the server', 'Refactor this module'],
    Analysis: ['Explain binary search', 'What is binary search?', 'Write a binary search explanation for the blog', 'Analyze the logs', 'Analyse the data', 'Analysis of results', 'Explain recursion', 'What is a monad?', 'Describe the system'],
    Research: ['Research binary search variants', 'Research quantum dots', 'Find the best library', 'Look up the docs', 'Search for papers'],
    Reasoning: ['Think about it', 'Reason about this', 'Solve x^2 = 4', 'Plan the sprint', 'Planning poker'],
    General: ['Say hello', 'Write a poem', 'Summarize this article']
  }
  for (const [type, instructions] of Object.entries(families)) {
    for (const instruction of instructions) t.equal(classifyTask(instruction), type, instruction)
  }

  t.test('case-insensitive', async (t) => {
    t.equal(classifyTask('WRITE CODE'), 'Coding')
    t.equal(classifyTask('wHaT iS love'), 'Analysis')
    t.equal(classifyTask('LOOK UP the weather'), 'Research')
    t.equal(classifyTask('SOLVE it'), 'Reasoning')
  })

  t.test('first family wins: Coding > Analysis > Research > Reasoning', async (t) => {
    t.equal(classifyTask('Explain how to implement a function'), 'Coding')
    t.equal(classifyTask('Research it, then explain it'), 'Analysis')
    t.equal(classifyTask('Think about it and look up sources'), 'Research')
    t.equal(classifyTask('Plan the work'), 'Reasoning')
  })

  t.test('keywords match whole words only', async (t) => {
    for (const instruction of ['Visit the planet Mars', 'Classify these images', 'Encode the string', 'Codebase tour',
      'The functionality tour', 'A classic novel', 'Thinker statue', 'A reasonable price', 'Findings summary',
      'Resolve the conflict', 'Unexplained events', 'whatis page']) {
      t.equal(classifyTask(instruction), 'General', instruction)
    }
  })

  t.test('keywords across whitespace', async (t) => {
    t.equal(classifyTask('What   is\tthis'), 'Analysis')
    t.equal(classifyTask('write\ncode'), 'Coding')
  })

  t.test('same answer on repeated calls (no stateful regex)', async (t) => {
    for (let i = 0; i < 3; i++) t.equal(classifyTask('debug it'), 'Coding')
  })

  t.test('past tense "fixed the bug" is Coding like the other verbs\' -ed forms', async (t) => {
    t.equal(classifyTask('Confirm we fixed the bug in checkout'), 'Coding')
  })
})

// These inputs took hours (nested quantifiers) or minutes (backtracking over a line) before the
// parser was made linear; a regression shows up as this test never finishing.
t.test('pathological inputs parse in linear time', async (t) => {
  t.strictSame(parseInstructions('first a' + ' '.repeat(100_000) + 'b then c'), ['a' + ' '.repeat(100_000) + 'b', 'c'])
  t.strictSame(parseInstructions('- ' + ' '.repeat(1 << 20) + 'a\u2028b'), ['a\u2028b'])
  t.equal(parseInstructions('first ' + 'x, and '.repeat(50_000) + 'then y').length, 2)
})

t.test('parseInstructions: what review found dropped or split (stop 65)', async (t) => {
  t.test('a lead-in that is an instruction is kept as a task, whatever its type; only a short heading goes', async (t) => {
    t.strictSame(parseInstructions('Translate these sentences into French:\n- Good morning\n- See you tomorrow'),
      ['Translate these sentences into French:', 'Good morning', 'See you tomorrow'])
    t.strictSame(parseInstructions('Do not modify the production database, and keep every change behind the flag:\n1. Migrate the schema\n2. Deploy'),
      ['Do not modify the production database, and keep every change behind the flag:', 'Migrate the schema', 'Deploy'])
    t.strictSame(parseInstructions('Only use the staging cluster, never prod: Task 1: migrate Task 2: deploy'),
      ['Only use the staging cluster, never prod:', 'migrate', 'deploy'], 'markers behind an instruction: it is a task of its own')
    t.strictSame(parseInstructions('Tasks for today:\nTask 1: analyze the logs\nTask 2: fix the bug'), ['analyze the logs', 'fix the bug'], 'a heading with a qualifier')
    for (const heading of ['Implementation plan:', 'Research tasks:', 'Plan:', 'Next steps:', 'Here is what to do:', 'To do:', 'TODO:', 'Two things:']) {
      t.strictSame(parseInstructions(`${heading}\n1. Write the parser\n2. Test it`), ['Write the parser', 'Test it'], heading)
    }
  })

  t.test('a fenced code block is part of its item, as written: never split, its lines and indent kept', async (t) => {
    const yaml = 'Fix this workflow so the tests run on Node 22:\n```yaml\nsteps:\n  - uses: actions/checkout@v4\n  - run: npm test\n```'
    t.strictSame(parseInstructions(yaml), [yaml], 'a lead and a block: one task, whole')
    t.strictSame(parseInstructions('1. Write code:\n```\n1. foo\n2. bar\n```\n2. Test it'), ['Write code:\n```\n1. foo\n2. bar\n```', 'Test it'])
    t.strictSame(parseInstructions('1. Fix this function:\n   ```python\n   def f(x):\n       if x:\n           return 1\n\n       return 2\n   ```\n2. Add a test'),
      ['Fix this function:\n```python\ndef f(x):\n    if x:\n        return 1\n\n    return 2\n```', 'Add a test'], 'indent past the item\'s own, and blank lines, kept')
    t.strictSame(parseInstructions('Task 1: run this\n```\nTask 2: not a marker\n```\nTask 2: deploy'), ['run this\n```\nTask 2: not a marker\n```', 'deploy'])
    t.strictSame(parseInstructions('First, add this handler:\n```js\nfetch(url).then(r => r.json())\n```\nthen deploy it'),
      ['add this handler:\n```js\nfetch(url).then(r => r.json())\n```', 'deploy it'], 'no marker inside code joins; one after it does')
  })

  t.test('sequences: a method call or a condition\'s "then" joins nothing; a dot that is part of the task stays', async (t) => {
    t.strictSame(parseInstructions('First, explain when to use then() in promises'), ['First, explain when to use then() in promises'])
    t.strictSame(parseInstructions('First, replace the callbacks with .then chains, then test'), ['replace the callbacks with .then chains', 'test'])
    t.strictSame(parseInstructions('First, run the tests and if they fail then revert the commit'), ['First, run the tests and if they fail then revert the commit'])
    t.strictSame(parseInstructions('First, run the tests, then if they fail then revert, finally report'), ['run the tests', 'if they fail then revert', 'report'])
    t.strictSame(parseInstructions('First, back up, and if it fails, then stop'), ['First, back up, and if it fails, then stop'], 'a comma before the condition\'s "then" too')
    t.strictSame(parseInstructions('First, git add . then git commit'), ['git add .', 'git commit'])
    t.strictSame(parseInstructions('First, cd .. then run make.'), ['cd ..', 'run make'])
  })

  t.test('a date written "2024. 1. 5." is no list item; an item starting with a decimal or a time is', async (t) => {
    t.strictSame(parseInstructions('2024. 1. 5. 회의록 정리'), ['2024. 1. 5. 회의록 정리'])
    t.strictSame(parseInstructions('1. 10.30 standup\n2. 14.00 review'), ['10.30 standup', '14.00 review'])
    t.strictSame(parseInstructions('1. Upgrade to 3.x\n2. 4.0 release notes'), ['Upgrade to 3.x', '4.0 release notes'])
  })

  t.test('(second review) inline ``` is no fence; a fence closes only with its own kind; headings with a verb or pointer are instructions', async (t) => {
    t.strictSame(parseInstructions('1. Run the tests\n```npm test```\n2. Deploy'), ['Run the tests\n```npm test```', 'Deploy'])
    t.strictSame(parseInstructions('Task 1: run\n```npm test```\nTask 2: deploy'), ['run\n```npm test```', 'deploy'])
    t.strictSame(parseInstructions('1. Write\n```\ncode\n~~~\n2. not an item\n```\n3. c'), ['Write\n```\ncode\n~~~\n2. not an item\n```', 'c'])
    for (const lead of ['Explain these steps:', 'Implement these steps:', 'Here is the code to refactor:', 'Here is what not to do:', 'Skip these steps:', 'Do the following in code:']) {
      t.strictSame(parseInstructions(`${lead}\n1. git fetch\n2. git rebase`), [lead, 'git fetch', 'git rebase'], lead)
    }
    for (const heading of ['Steps to reproduce:', 'Notes:', 'Agenda:', 'Please do the following, in order:', 'Tasks (in order):']) {
      t.strictSame(parseInstructions(`${heading}\n1. a\n2. b`), ['a', 'b'], heading)
    }
  })

  t.test('(second review) conditions and calls: "check if ..., then" splits; a condition is judged in its own clause; "then (optionally)" joins', async (t) => {
    const cases: Array<[string, string[]]> = [
      ['First, check if the tests pass, then deploy', ['check if the tests pass', 'deploy']],
      ['First, run the migration once, then deploy', ['run the migration once', 'deploy']],
      ['First, if the tests fail then revert, then report', ['if the tests fail then revert', 'report']],
      ['First, build, then (optionally) lint it', ['build', '(optionally) lint it']],
      ['First, build.Then test', ['build', 'test']],
      ['First, run `npm install`, then run `npm test`.', ['run `npm install`', 'run `npm test`']]
    ]
    for (const [input, tasks] of cases) t.strictSame(parseInstructions(input), tasks, input)
  })

  t.test('(third review) a fence opened on an item\'s line, German dates, stray fence lines and separators, more headings', async (t) => {
    t.strictSame(parseInstructions('- ```bash\n  npm ci\n  ```\n- deploy'), ['```bash\nnpm ci\n```', 'deploy'])
    t.strictSame(parseInstructions('1. 12. Dezember: Feier planen\n2. 15. Dezember: Geschenke kaufen'), ['12. Dezember: Feier planen', '15. Dezember: Geschenke kaufen'])
    t.strictSame(parseInstructions('1. 2024. 1. 5. 회의록 정리\n2. 2024. 1. 6. 보고서 작성'), ['2024. 1. 5. 회의록 정리', '2024. 1. 6. 보고서 작성'])
    t.strictSame(parseInstructions('```\n1. a\n2. b'), ['```', 'a', 'b'], 'a fence that never closes is text')
    t.strictSame(parseInstructions('Task 1: migrate\n~~~\nTask 2: verify'), ['migrate\n~~~', 'verify'])
    for (const heading of ['Overview:', 'Summary:', 'Deliverables:', 'Things to do:']) t.strictSame(parseInstructions(`${heading}\n1. a\n2. b`), ['a', 'b'], heading)
  })

  t.test('(second review) linear on conditions repeated and on many fences before many markers', async (t) => {
    for (const size of [8_000, 64_000]) {
      const started = performance.now()
      parseInstructions('`'.repeat(size) + 'x`')
      t.ok(performance.now() - started < 1000, `a run of ${size} backticks: ${Math.round(performance.now() - started)} ms`)
    }
    let started = performance.now()
    parseInstructions('First, ' + 'when a, then b, '.repeat(25_000))
    t.ok(performance.now() - started < 2000, `conditions: ${Math.round(performance.now() - started)} ms for 400 KB`)
    started = performance.now()
    parseInstructions('```\n```\n'.repeat(20_000) + 'task 3: x '.repeat(20_000))
    t.ok(performance.now() - started < 2000, `fences then markers: ${Math.round(performance.now() - started)} ms`)
  })

  t.test('"fix" with words between it and "bug", and "bugfix", are Coding', async (t) => {
    for (const text of ['Fix the login bug', 'Fix this bug', 'Fix these bugs', 'Fix all the bugs', 'Fixing a memory-leak bug', 'Bugfix for login']) {
      t.equal(classifyTask(text), 'Coding', text)
    }
    t.equal(classifyTask('Report the bug to the vendor'), 'General', 'a bug alone is not code')
    for (const [text, type] of [['Research the fixes for the Spectre bug', 'Research'], ['Explain why the fix for the bug works', 'Analysis'], ['Fix a time to bug the landlord', 'General']]) {
      t.equal(classifyTask(text as string), type, `${text}: not Coding`)
    }
  })
})

t.test('(stop 67 review) what shows nothing is blank; keywords are words after accented letters too', async (t) => {
  t.test('instructions of invisible characters only are blank, and such an item is dropped', async (t) => {
    for (const text of ['\u200b', ' \u200b\u2060\u180e ', '\u00ad\ufeff\u200c\u200d', '1. \u200b\n2. \u2060']) {
      t.throws(() => parseInstructions(text), { code: 'INVALID_INSTRUCTIONS' }, JSON.stringify(text))
    }
    t.strictSame(parseInstructions('1. Research\n2. \u200b\u2060\n3. Design'), ['Research', 'Design'])
    t.strictSame(parseInstructions('\u200bResearch'), ['\u200bResearch'], 'visible text keeps what surrounds it')
    t.strictSame(parseInstructions('\u200b\nTask 1: research\nTask 2: design'), ['research', 'design'], 'nothing visible before task markers')
    t.strictSame(parseInstructions('\u06dd'), ['\u06dd'], 'a format character that draws a mark (the Arabic end of ayah) is no blank')
  })

  t.test('a keyword right after an accented letter or a combining mark is part of a longer word', async (t) => {
    for (const text of ['Décode le fichier base64', 'précode', 'réimplementing the API', 'Großplan erstellen', 'de\u0301code it', 'x_code', 'code2']) {
      t.equal(classifyTask(text), 'General', text)
    }
    t.equal(classifyTask('写一个function'), 'Coding', 'Chinese text puts no space before an English keyword')
    for (const text of ['ช่วยแก้debugที่หน้าlogin', 'इसेdebug करो', 'कृपयाrefactor करें']) t.equal(classifyTask(text), 'Coding', `${text}: nor do Thai and Hindi, whose syllables end in marks`)
    t.equal(classifyTask('Ça code bien'), 'Coding', 'a keyword after an accented word and a space')
  })

  t.test('the plural and past forms of the keywords; "codes" and "coded" are words of other work (ZIP codes, color-coded)', async (t) => {
    for (const [text, type] of [['Compare the implementations', 'Coding'], ['Find the ZIP codes for these addresses', 'Research'], ['Explain the HTTP status codes', 'Analysis'],
      ['Describe the color-coded chart', 'Analysis'], ['Looking up prior art', 'Research'], ['She looks up the API', 'Research'], ['Looked up the docs', 'Research'],
      ['Reasoned about the trade-off', 'Reasoning'], ['Explanations for the team', 'Analysis'], ['Descriptions of the endpoints', 'Analysis']] as const) {
      t.equal(classifyTask(text), type, text)
    }
  })
})

t.test('(stop 72 review) task numbers with a digit after, a lone CR before a condition\'s then, a stray fence before a block, a heading before task markers', async (t) => {
  t.strictSame(parseInstructions('Task 1.5 is slower than task 2.5'), ['Task 1.5 is slower than task 2.5'], 'a decimal after "task" is prose')
  t.strictSame(parseInstructions('Task 1.1: set up the DB\nTask 1.2: deploy it'), ['Task 1.1: set up the DB\nTask 1.2: deploy it'])
  t.strictSame(parseInstructions('Task 3-4 first, then task 4-5'), ['Task 3-4 first, then task 4-5'])
  t.strictSame(parseInstructions('First, check the build\rif it fails then revert'), ['First, check the build\rif it fails then revert'], 'a lone CR ends the clause as LF does')
  t.strictSame(parseInstructions('First, check the build\nif it fails then revert'), ['First, check the build\nif it fails then revert'])
  t.strictSame(parseInstructions('1. Run the stray fence check\n```\n2. Add to the config:\n~~~\n3. not an item\n~~~\n4. Deploy'),
    ['Run the stray fence check\n```', 'Add to the config:\n~~~\n3. not an item\n~~~', 'Deploy'], 'a fence never closed keeps no later block from pairing')
  t.strictSame(parseInstructions('Our database must not go down.\nPlease do the following:\nTask 1: back up\nTask 2: migrate'),
    ['Our database must not go down.', 'back up', 'migrate'], 'the heading line goes, the text above it stays')
  t.strictSame(parseInstructions('Our DB is prod.\nTask 1: a\nTask 2: b'), ['Our DB is prod.', 'a', 'b'], 'text above markers that start lines is a task, as above a list')
  t.strictSame(parseInstructions('Be quick. Task 1: a Task 2: b'), ['Be quick. Task 1: a Task 2: b'], 'markers inside a sentence stay prose')
  t.strictSame(parseInstructions('Status report\ntask 1. is done and task 2. is blocked'), ['Status report\ntask 1. is done and task 2. is blocked'], 'prose wrapped onto a line starting with a marker stays prose')
  t.strictSame(parseInstructions('Our DB is prod.\nTask 1: back up. Task 2: migrate'), ['Our DB is prod.', 'back up.', 'migrate'], 'markers after a sentence\'s end, the first starting a line')
  t.strictSame(parseInstructions('Intro\nTask 1) a; Task 2) b'), ['Intro', 'a;', 'b'])
  t.strictSame(parseInstructions('Task 1:5 min warmup\nTask 2:10 min run'), ['5 min warmup', '10 min run'], 'a digit after a colon is the task\'s')
  t.strictSame(parseInstructions('Task 1)2 eggs Task 2)3 eggs'), ['2 eggs', '3 eggs'])
})
