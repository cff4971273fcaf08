import neostandard from 'neostandard'

// Standard style for the TypeScript and the bench's JavaScript. Compiled output and the
// dashboard's built bundle are not ours to lint.
export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'dashboard/static/**', 'node_modules/**', 'data/**'] }),
  {
    rules: {
      // `void promise()` marks a promise whose errors are handled inside it (each is commented where it is not obvious).
      'no-void': ['error', { allowAsStatement: true }],
      // A TypeBox schema and its Static<> type share one name by design; tsc catches real redeclarations.
      '@typescript-eslint/no-redeclare': 'off',
      // Tests and tools loop until a callback or timer changes a flag, which this rule cannot see.
      'no-unmodified-loop-condition': 'off'
    }
  },
  {
    // prom-client metrics register themselves with the registry given to their constructor.
    files: ['services/metrics/**'],
    rules: { 'no-new': 'off' }
  },
  {
    // Tests check literal `${...}` placeholders in Grafana and Prometheus files.
    files: ['test/**'],
    rules: { 'no-template-curly-in-string': 'off' }
  }
]
