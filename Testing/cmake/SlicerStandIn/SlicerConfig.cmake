# Stand-in for the SlicerConfig.cmake of a Slicer build tree, for CI without a Slicer build.
#
# It provides what a pure-Python (scripted-module) extension uses of Slicer's CMake API, with the
# same variable and command names, so the extension's real CMakeLists.txt files configure, build,
# install and package unchanged:
#   cmake -S <extension> -B <build> -DSlicer_DIR=<this folder>
# It does not prove compatibility with Slicer's own macros (that needs a Slicer build tree).

set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 12)
set(Slicer_VERSION_PATCH 0)
set(Slicer_VERSION "${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}.${Slicer_VERSION_PATCH}")
set(Slicer_MAIN_PROJECT_APPLICATION_NAME "Slicer")
set(Slicer_IS_STAND_IN TRUE)

# Install layout of an extension, relative to the install prefix (as in Slicer).
set(Slicer_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_QTSCRIPTEDMODULES_SUBDIR "qt-scripted-modules")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_LIB_DIR}/${Slicer_QTSCRIPTEDMODULES_SUBDIR}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")

set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")
