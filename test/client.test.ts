/**
 * A client generated from the live /documentation/json works for every README call: types
 * from openapi-typescript, requests by openapi-fetch, the calls in
 * test/fixtures/client/readme-calls.mts type-checked with the project's tsc, then run against
 * a real listening server.
 */
import { spawn } from 'node:child_process'
import { copyFile, symlink, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import openapiTS, { astToString, type OpenAPI3 } from 'openapi-typescript'
import t from 'tap'
import { build, tempDir } from './helper.js'
import { node } from './node-child.js'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')

/** tsc's exit code and output. */
async function tsc (project: string): Promise<{ code: number | null, output: string }> {
  const child = spawn(...node([TSC, '-p', project]), { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', resolve)
  })
  return { code, output }
}

t.test('every README call type-checks against a generated client and gets the documented answer', async (t) => {
  const app = await build(t, {
    // The Research agent runs until cancelled, so the README's cancel has a run to stop.
    executors: {
      Research: async (_task, { signal }) => await new Promise((_resolve, reject) => {
        signal.addEventListener('abort', () => reject(new Error('stopped')), { once: true })
      })
    }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`

  const document = await (await fetch(`${base}/documentation/json`)).json() as OpenAPI3
  const folder = await tempDir(t, 'taskvault-client-')
  await writeFile(join(folder, 'api.d.ts'), astToString(await openapiTS(document)))
  await copyFile(join(ROOT, 'test', 'fixtures', 'client', 'readme-calls.mts'), join(folder, 'readme-calls.mts'))
  // The project's packages (openapi-fetch, @types/node), without copying them.
  await symlink(join(ROOT, 'node_modules'), join(folder, 'node_modules'), 'dir')
  await writeFile(join(folder, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      target: 'ES2022',
      module: 'NodeNext',
      moduleResolution: 'NodeNext',
      lib: ['ES2023'],
      types: ['node'],
      strict: true,
      noUncheckedIndexedAccess: true,
      exactOptionalPropertyTypes: true,
      skipLibCheck: true
    },
    files: ['readme-calls.mts', 'api.d.ts']
  }))
  const checked = await tsc(join(folder, 'tsconfig.json'))
  t.equal(checked.code, 0, `the README calls type-check against the generated client${checked.output === '' ? '' : `:\n${checked.output}`}`)
  if (checked.code !== 0) return

  const { readmeCalls } = await import(pathToFileURL(join(folder, 'readme-calls.mjs')).href) as {
    readmeCalls: (baseUrl: string) => Promise<Record<string, { status: number, body: any }>>
  }
  const answers = await readmeCalls(base)

  t.match(answers.create, { status: 200, body: { session_id: 'important_work', total_tasks: 3 } })
  t.match(answers.execute, { status: 200, body: { instruction: 'Task A', status: 'Completed', result: 'Task A' } })
  t.match(answers.progress, { status: 200, body: { total: 3, completed: 1, pending: 2, running: false } })
  t.match(answers.executeAll, { status: 200, body: { total_executed: 2, progress: { all_done: true } } })
  t.match(answers.createTasks, { status: 200, body: { total_tasks: 2, tasks: [{ task_type: 'Coding' }, { task_type: 'Analysis' }] } })
  t.match(answers.createSlow, { status: 200, body: { tasks: [{ task_type: 'Research' }] } })
  t.match(answers.executeAllBackground, { status: 202, body: { session_id: 'slow', status: 'running' } })
  t.match(answers.progressRunning, { status: 200, body: { in_progress: 1, running: true } })
  t.match(answers.cancel, { status: 200, body: { session_id: 'slow', cancelled_task_id: String, progress: { failed: 1 } } })
  t.match(answers.listOne, { status: 200, body: { session_id: 'important_work', total: 3, current_index: 3 } })
  t.match(answers.listAll, { status: 200, body: { total: 3, offset: 0, limit: 100 } }, 'GET /list?session_id=all, no limit')
  t.match(answers.listPage, { status: 200, body: { total: 3, limit: 10 } })
  t.match(answers.stats, { status: 200, body: { total_sessions: 3, total_tasks: 6, completed_tasks: 3, failed_tasks: 1 } })
  t.match(answers.archive, { status: 200, body: { archived: 0, deleted: 0 } }, 'POST /archive with no body')
  t.same([...(answers.archiveNow?.body?.archived_ids ?? [])].sort(), ['important_work', 'slow'], 'older_than_days: 0 archives every finished session')
  t.match(answers.listArchived, { status: 200, body: { total: 2, limit: 20 } })
  t.match(answers.progressArchived, { status: 200, body: { all_done: true, archived: true } })
  t.match(answers.delete, { status: 204 })
  t.match(answers.health, { status: 200, body: { status: 'ok' } })
  t.match(answers.ready, { status: 200, body: { status: 'ready' } })
  t.same([...(answers.listIncludeIds?.body ?? [])].sort(), ['important_work', 'slow'])
})
