# syntax=docker/dockerfile:1
# Build stage: compile TypeScript with the dev toolchain.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY bin ./bin
RUN npm ci --ignore-scripts && npx tsc -p tsconfig.build.json

# Runtime stage: production dependencies and the compiled code only, as an unprivileged user.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
COPY config ./config
COPY sql ./sql
USER node
EXPOSE 6432 9187
# /healthz answers while the process is alive; /readyz also checks the server and the registry.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:9187/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "bin/pgbg-proxy.js"]
CMD ["start", "--config", "config/pgbg-proxy.yaml", "--listen", "0.0.0.0:6432", "--metrics-listen", "0.0.0.0:9187"]
