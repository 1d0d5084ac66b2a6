# Stand-in for Slicer's SlicerExtensionCPack.cmake: `cpack` (or the `package` target) writes the
# installed extension as one .tar.gz named like Slicer's extension archives
# (<Slicer revision>-<os>-<arch>-<extension>-<revision>; here "0" and "standin").

string(TOLOWER "${CMAKE_SYSTEM_NAME}" _os)
set(_arch "${CMAKE_SYSTEM_PROCESSOR}")
if(_arch MATCHES "^(x86_64|AMD64)$")
  set(_arch "amd64")
endif()

set(CPACK_GENERATOR "TGZ")
set(CPACK_PACKAGE_NAME "${EXTENSION_NAME}")
set(CPACK_PACKAGE_VENDOR "${EXTENSION_CONTRIBUTORS}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${EXTENSION_DESCRIPTION}")
set(CPACK_PACKAGE_FILE_NAME "0-${_os}-${_arch}-${EXTENSION_NAME}-standin")
set(CPACK_OUTPUT_FILE_PREFIX "${CMAKE_BINARY_DIR}")
include(CPack)
