// What one AES call costs at each size, in this runtime: the per-call part (createCipheriv, update,
// final) against the per-byte part. A sealed session of a few KB pays mostly the first.
//   node bench/profile/cipher-calls.mjs [rounds=5]
import { createCipheriv, createSecretKey, randomBytes } from 'node:crypto'

const rounds = Number(process.argv[2] ?? 5)
const key = createSecretKey(randomBytes(32))
console.log(`node ${process.version}, OpenSSL ${process.versions.openssl}`)
for (const size of [16, 1024, 4352, 65536, 1 << 20]) {
  const plaintext = randomBytes(size)
  const calls = Math.max(20, Math.floor(2e7 / (size + 2000)))
  for (const alg of ['aes-256-gcm', 'aes-256-ctr']) {
    const iv = randomBytes(alg === 'aes-256-gcm' ? 12 : 16)
    const times = []
    for (let r = 0; r < rounds; r++) {
      const start = process.hrtime.bigint()
      for (let i = 0; i < calls; i++) {
        const cipher = createCipheriv(alg, key, iv)
        cipher.update(plaintext)
        cipher.final()
      }
      times.push(Number(process.hrtime.bigint() - start) / calls / 1000)
    }
    const best = Math.min(...times)
    console.log(`${alg} ${String(size).padStart(8)} bytes: ${best.toFixed(2).padStart(8)} µs a call, ${(size / best / 1000).toFixed(2)} GB/s`)
  }
}
