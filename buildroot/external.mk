include $(sort $(wildcard $(BR2_EXTERNAL_RACKVAULT_PATH)/package/*/*.mk))
