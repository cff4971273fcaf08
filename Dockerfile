# taskvault: build with every dependency, run with production ones only, as a non-root user.
#   docker build -t taskvault:0.1.0 .
#   docker run -p 7000:7000 -v taskvault-data:/app/data/tasks -e TASK_API_KEYS=... taskvault:0.1.0

FROM node:20-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Scripts off: nothing to build before the sources are in.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY . .
RUN npm run build && rm -rf dist/test dist/examples

FROM node:20-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

FROM node:20-slim
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=7000 \
    TASK_STORAGE_DIR=/app/data/tasks
WORKDIR /app
# Code and dependencies stay root-owned and read-only to the service; only the data folder is its own.
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
RUN mkdir -p /app/data/tasks && chown 1000:1000 /app/data/tasks && chmod 700 /app/data/tasks
# Numeric, so Kubernetes' runAsNonRoot can verify it (the image's `node` user is 1000).
USER 1000:1000
VOLUME ["/app/data/tasks"]
EXPOSE 7000
# The image has no curl; Node 20 has fetch.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 7000) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
STOPSIGNAL SIGTERM
# Node itself is PID 1 (exec form, no shell): SIGTERM reaches close-with-grace, which drains and exits.
CMD ["node", "dist/server.js"]
