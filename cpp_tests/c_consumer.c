/* A plain C11 consumer of kvr.h: checks the ABI version and opens/closes a small region. */
#include <kvr.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
  if (kvr_abi_version() != KVR_ABI_VERSION) {
    fprintf(stderr, "ABI mismatch: library %u, header %u\n", kvr_abi_version(), KVR_ABI_VERSION);
    return 1;
  }
  char name[64];
  snprintf(name, sizeof name, "c_consumer_%ld", (long)getpid());
  kvr_region_config cfg;
  if (kvr_region_config_default(&cfg) != KVR_OK) return 2;
  cfg.name = name;
  cfg.num_blocks = 4;
  cfg.cpu_page_size = 4096;
  kvr_region *region = NULL;
  kvr_status st = kvr_region_open(&cfg, &region);
  if (st != KVR_OK) {
    fprintf(stderr, "%s: %s\n", kvr_status_str(st), kvr_last_error_message());
    return 3;
  }
  kvr_view view;
  if (kvr_create_view(region, 4096, &view) != KVR_OK) return 4;
  memset(view.base + 3 * view.row_stride, 0x5a, view.bytes_per_block);
  int ok = view.base[3 * view.row_stride + 4095] == 0x5a;
  kvr_region_close(region);
  printf("kvr %s C consumer: %s\n", kvr_version(), ok ? "ok" : "FAILED");
  return ok ? 0 : 5;
}
