################################################################################
#
# rackvault
#
################################################################################

# Built from the source tree this external tree lives in (one directory up).
RACKVAULT_VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(BR2_EXTERNAL_RACKVAULT_PATH)/../Cargo.toml | head -n1)
RACKVAULT_SITE = $(BR2_EXTERNAL_RACKVAULT_PATH)/..
RACKVAULT_SITE_METHOD = local
RACKVAULT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude target --exclude .git
RACKVAULT_LICENSE = Apache-2.0
# The binary's crate in the workspace; cargo finds the workspace's Cargo.lock from there.
RACKVAULT_SUBDIR = firmware/rackvault

# A local source is not downloaded, so the cargo infrastructure does not vendor its
# dependencies: vendor them here (this step needs the crates.io registry), pinned by
# Cargo.lock, before the offline build.
define RACKVAULT_VENDOR_CRATES
	mkdir -p $(@D)/.cargo
	cd $(@D) && $(HOST_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		cargo vendor --locked --versioned-dirs VENDOR > $(@D)/.cargo/config.toml
endef
RACKVAULT_PRE_BUILD_HOOKS += RACKVAULT_VENDOR_CRATES

$(eval $(cargo-package))
