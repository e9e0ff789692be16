import { EmbedClusterService, SidecarError } from "embed-cluster-client";

const service = new EmbedClusterService({
  port: Number(process.env.SIDECAR_PORT ?? 8421),
  onProgress: (event) => {
    if (event.type === "download_progress") console.log(`downloading ${event.data.files_done}/${event.data.files_total}`);
    if (event.type === "model_loaded") console.log(`${event.data.model} loaded: ${event.data.dimensions} dimensions`);
  },
});
try {
  await service.startSidecar(); // doctor's checks, then `embed-cluster up`; resolves once /health is 200
} catch (error) {
  console.error(error instanceof SidecarError ? `cannot start: ${error.code}: ${error.reason}` : error);
  process.exit(1);
}
const client = service.client(); // an EmbedClusterClient (the seed's PythonSidecarClient) on the service's port
const vectors = await client.embedBatch(["The first note", "Another note"]);
console.log(`${vectors.length} vectors of ${vectors[0]?.length} numbers`);
await service.stopSidecar(); // SIGTERM, waits for shutdown_complete and the exit
