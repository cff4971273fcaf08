/**
 * The published package, as another service gets it: `npm pack`, installed into a fresh
 * project, then examples/embed.js (a Fastify service registering taskvault under /agents with
 * its own executor) runs from there and serves create and execute over real HTTP. The same
 * example type-checks against the package's emitted types, and the subpath exports resolve.
 */
import { execFile, spawn } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { freePort, within } from './server-process.js'
import { node } from './node-child.js'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const EXAMPLE = fileURLToPath(new URL('../examples/embed.js', import.meta.url))
const NPM_TIMEOUT_MS = 120_000

/**
 * The environment for npm: this process's, without the variables `npm test` sets for its own
 * project (they would point the nested npm back at this repository), and without tap's
 * preload in NODE_OPTIONS (see node-child.ts).
 */
function npmEnv (): NodeJS.ProcessEnv {
  const keep = new Set(['npm_config_cache', 'npm_config_registry', 'npm_config_userconfig'])
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => key !== 'NODE_OPTIONS' && (!key.toLowerCase().startsWith('npm_') || keep.has(key.toLowerCase()))))
}

async function npm (args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run('npm', args, { cwd, env: npmEnv(), timeout: NPM_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 })
    return stdout
  } catch (err) {
    const { stdout, stderr } = err as { stdout?: string, stderr?: string }
    throw new Error(`npm ${args.join(' ')} failed in ${cwd}: ${(err as Error).message}\n${stderr ?? ''}\n${stdout ?? ''}`)
  }
}

t.test('the packed package installs into another project and runs the embedding example', async (t) => {
  const scratch = await mkdtemp(join(tmpdir(), 'taskvault-pack-'))
  t.teardown(() => rm(scratch, { recursive: true, force: true, maxRetries: 3 }))

  // dist/ is fresh from `npm test`'s build, so the pack skips the prepare script's second build.
  const packed = JSON.parse(await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', scratch], ROOT)) as Array<{ filename: string, files: Array<{ path: string }> }>
  const tarball = join(scratch, packed[0]?.filename ?? '')
  const files = packed[0]?.files.map((file) => file.path) ?? []
  t.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts'), 'the root export and its types are packed')
  t.notOk(files.some((file) => file.startsWith('dist/test/') || file.endsWith('.map')), 'no tests or source maps')
  t.ok(['index.html', 'app.js', 'dashboard.css'].every((name) => files.includes(`dashboard/static/${name}`)), 'the dashboard\'s files are packed')
  t.ok(files.includes('LICENSE'), 'the license travels with the package')

  const project = join(scratch, 'host')
  await mkdir(project)
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'embed-host', private: true, type: 'module' }))
  await npm(['install', '--no-audit', '--no-fund', '--prefer-offline', '--ignore-scripts', tarball], project)
  await copyFile(EXAMPLE, join(project, 'embed.js'))

  t.test('subpath exports resolve to the building blocks', async (t) => {
    const script = [
      "const { parseInstructions } = await import('taskvault/parser')",
      "const { FileSessionStore } = await import('taskvault/store')",
      "const { TaskManager } = await import('taskvault/manager')",
      "const { connectionConfig } = await import('taskvault/postgres')",
      "const plugins = await Promise.all(['persistence', 'task-manager', 'archiver', 'auth', 'metrics', 'docs', 'routes'].map((name) => import('taskvault/' + name)))",
      "const root = await import('taskvault')",
      "const pool = connectionConfig({ url: 'postgres://u@db/x', schema: 'tv', max: 2, statementTimeoutMs: 0 })",
      'console.log(JSON.stringify({ parsed: parseInstructions("1. a\\n2. b"), store: typeof FileSessionStore, manager: typeof TaskManager, plugins: plugins.map((p) => typeof p.default), root: typeof root.default, agentError: new root.AgentError("x", { transient: true }).transient, options: pool.options }))'
    ].join('\n')
    const { stdout } = await run(...node(['--input-type=module', '-e', script]), { cwd: project, timeout: 30_000 })
    t.match(JSON.parse(stdout), { parsed: ['a', 'b'], store: 'function', manager: 'function', plugins: Array(7).fill('function'), root: 'function', agentError: true, options: /search_path=tv/ })
  })

  t.test('the installed package serves its dashboard, with no network needed', async (t) => {
    const script = [
      "const { buildApp } = await import('taskvault/app')",
      "const { mkdtempSync } = await import('node:fs')",
      "const app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: mkdtempSync('dash-') + '/tasks' } })",
      'const statuses = []',
      "for (const url of ['/dashboard/', '/dashboard/app.js', '/dashboard/dashboard.css']) statuses.push((await app.inject(url)).statusCode)",
      'await app.close()',
      'console.log(JSON.stringify(statuses))'
    ].join('\n')
    const { stdout } = await run(...node(['--input-type=module', '-e', script]), { cwd: project, timeout: 30_000 })
    t.same(JSON.parse(stdout), [200, 200, 200])
  })

  t.test('the example and every export type-check against the emitted types, which check too (no skipLibCheck)', async (t) => {
    await copyFile(join(ROOT, 'examples', 'embed.ts'), join(project, 'embed.ts'))
    await writeFile(join(project, 'exports.ts'), [
      "import Fastify from 'fastify'",
      "import taskvault, { AgentError, TaskvaultError, type Executor } from 'taskvault'",
      ...['persistence', 'task-manager', 'archiver', 'auth', 'routes', 'metrics', 'docs', 'config'].map((name, i) => `import plugin${i} from 'taskvault/${name}'`),
      "import { buildApp } from 'taskvault/app'",
      "import { FileSessionStore } from 'taskvault/store'",
      "import { TaskManager } from 'taskvault/manager'",
      "import { parseInstructions } from 'taskvault/parser'",
      "import { connectionConfig } from 'taskvault/postgres'",
      "const run: Executor = async (task) => { if (task.instruction === '') throw new AgentError('empty', { transient: true }); return { result: task.instruction } }",
      'const app = Fastify()',
      "await app.register(taskvault, { prefix: '/tv', executors: { default: run }, logLevel: 'warn' })",
      'app.addHook(\'onRequest\', app.verifyApiKey)',
      "app.get('/mine', { onRequest: app.verifyApiKey }, async () => 'mine')",
      'const status: number = new TaskvaultError(\'SESSION_NOT_FOUND\', \'x\').statusCode',
      // The host's own settings, as @fastify/env types them: taskvault's building blocks leave that name to it.
      "declare module 'fastify' { interface FastifyInstance { config: { PORT: number } } }",
      'export const port: number = app.config.PORT',
      'export const all = [status, plugin0, plugin1, plugin2, plugin3, plugin4, plugin5, plugin6, plugin7, buildApp, FileSessionStore, TaskManager, parseInstructions, connectionConfig]'
    ].join('\n'))
    // The host's own types are node's; everything else comes from the package and what it brings.
    const tsconfig = {
      compilerOptions: {
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        target: 'ES2022',
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        types: ['node'],
        typeRoots: [join(ROOT, 'node_modules', '@types')]
      },
      files: ['embed.ts', 'exports.ts']
    }
    await writeFile(join(project, 'tsconfig.json'), JSON.stringify(tsconfig))
    // A bundler's resolution too (Vite, esbuild, tsx users), where a default import of fastify is no namespace.
    await writeFile(join(project, 'tsconfig.bundler.json'), JSON.stringify({ ...tsconfig, compilerOptions: { ...tsconfig.compilerOptions, module: 'ESNext', moduleResolution: 'Bundler' } }))
    const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    for (const config of ['tsconfig.json', 'tsconfig.bundler.json']) {
      const report = await run(...node([tsc, '-p', join(project, config)]), { cwd: project, timeout: 60_000 })
        .then(() => '', (err: { stdout?: string }) => err.stdout ?? String(err))
      t.equal(report, '', `tsc reports nothing (${config})`)
    }
  })

  t.test('create and execute over HTTP, with the host\'s executor, saved in its folder', async (t) => {
    const tasksDir = join(scratch, 'agent-tasks')
    const port = await freePort()
    const base = `http://127.0.0.1:${port}`
    const child = spawn(...node(['embed.js']), {
      cwd: project,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PORT: String(port), HOST: '127.0.0.1', AGENT_TASKS_DIR: tasksDir, LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)))
    t.teardown(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exited
    })

    const deadline = Date.now() + 30_000
    for (;;) {
      const status = await fetch(`${base}/ready`).then((res) => res.status, () => 0)
      if (status === 200) break
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the example did not become ready\n${output}`)
      await Promise.race([sleep(50), exited])
    }
    const send = async (path: string, body: object): Promise<{ status: number, body: any }> => {
      const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
      return { status: res.status, body: await res.json() }
    }
    const created = await send('/agents/create', { session_id: 'review_42', instructions: '1. Read the diff\n2. Summarise the risks' })
    t.equal(created.status, 200)
    t.equal(created.body.total_tasks, 2)
    const executed = await send('/agents/execute', { session_id: 'review_42' })
    t.equal(executed.status, 200)
    t.equal(executed.body.status, 'Completed')
    t.equal(executed.body.result, 'reviewed "Read the diff" for review_42 (attempt 1)', 'the host\'s own executor ran')
    t.equal(executed.body.progress.completed, 1)
    t.equal((await send('/agents/create', { session_id: 'x', instructions: 'a', extra: 1 })).status, 400)

    child.kill('SIGTERM')
    t.equal(await within(exited, 30_000), 0, 'SIGTERM: drained and exited 0')
    t.same((await readdir(tasksDir)).filter((name) => name.endsWith('.json')), ['review_42.json'], 'the session is on disk')
  })
})
